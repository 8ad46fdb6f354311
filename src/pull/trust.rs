//! The TLS trust of the registry edge: the system's roots everywhere, plus the Image CR's
//! `additionalTrustedCA` for the registries it names. On the nodes the MCO writes each key
//! of that ConfigMap (`host..port`) to `/etc/docker/certs.d/host:port/ca.crt`, which
//! containers/image's `pkg/tlsclientconfig` adds to the roots for that registry only; here
//! the choice is made per server name, so a CA given for one port of a host serves its
//! other ports too (a server name carries no port).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

/// The host a ConfigMap key names (`registry.example.com..5000` → `registry.example.com`),
/// as the MCO reads it (`..` stands for `:`, which a ConfigMap key cannot hold).
pub fn key_host(key: &str) -> &str {
    key.split_once("..").map_or(key, |(host, _)| host)
}

#[derive(Debug)]
pub struct PerHost {
    system: Arc<WebPkiServerVerifier>,
    by_host: HashMap<String, Arc<WebPkiServerVerifier>>,
}

impl PerHost {
    /// `system`: the roots every registry is checked against; `extra`: ConfigMap keys to
    /// PEM bundles. A key whose bundle holds no certificate is an error naming it.
    pub fn new(
        system: Vec<CertificateDer<'static>>,
        extra: &BTreeMap<String, String>,
    ) -> Result<PerHost, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = |certs: Vec<CertificateDer<'static>>| {
            let mut roots = RootCertStore::empty();
            roots.add_parsable_certificates(certs);
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
                .build()
                .map_err(|e| e.to_string())
        };
        let mut added: HashMap<String, Vec<CertificateDer<'static>>> = HashMap::new();
        for (key, pem) in extra {
            let certs: Vec<CertificateDer<'static>> =
                CertificateDer::pem_slice_iter(pem.as_bytes())
                    .collect::<Result<_, _>>()
                    .map_err(|e| format!("additionalTrustedCA key {key}: {e}"))?;
            if certs.is_empty() {
                return Err(format!("additionalTrustedCA key {key}: no PEM certificate"));
            }
            added
                .entry(key_host(key).to_ascii_lowercase())
                .or_default()
                .extend(certs);
        }
        let mut by_host = HashMap::new();
        for (host, certs) in added {
            let all = system.iter().cloned().chain(certs).collect();
            by_host.insert(host, verifier(all)?);
        }
        Ok(PerHost {
            system: verifier(system)?,
            by_host,
        })
    }

    fn for_name(&self, name: &ServerName<'_>) -> &WebPkiServerVerifier {
        let host = match name {
            ServerName::DnsName(d) => d.as_ref().to_ascii_lowercase(),
            ServerName::IpAddress(ip) => std::net::IpAddr::from(*ip).to_string(),
            _ => String::new(),
        };
        self.by_host.get(&host).unwrap_or(&self.system)
    }
}

impl ServerCertVerifier for PerHost {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.for_name(server_name).verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.system.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.system.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.system.supported_verify_schemes()
    }
}

/// The client configuration the registry edge connects with.
pub fn client_config(extra: &BTreeMap<String, String>) -> Result<rustls::ClientConfig, String> {
    let native = rustls_native_certs::load_native_certs();
    let verifier = PerHost::new(native.certs, extra)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_hosts_as_the_mco_reads_them() {
        assert_eq!(
            key_host("registry.example.com..5000"),
            "registry.example.com"
        );
        assert_eq!(key_host("registry.example.com"), "registry.example.com");
        let bad = BTreeMap::from([("r.example.com".to_string(), "not pem".to_string())]);
        assert_eq!(
            PerHost::new(Vec::new(), &bad).unwrap_err(),
            "additionalTrustedCA key r.example.com: no PEM certificate"
        );
    }
}
