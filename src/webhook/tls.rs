//! Serving certificates: read from files and picked up again on the first handshake
//! after they change (service-ca and cert-manager rotate them in place), and a
//! generator for a development CA and serving pair.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use rustls::crypto::ring::default_provider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("certificate and key do not belong together: {0}")]
    Mismatch(String),
    #[error("generating certificates: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("a certificate valid {0} days: it must be valid 1 to {MAX_VALID_DAYS} days")]
    Days(i64),
    #[error("{0:?} is not a DNS name or IP address a client could check the certificate against")]
    Name(String),
}

/// What identifies a version of a file: modification and change times, size and inode.
/// The change time moves on every write, whatever a writer does to the modification
/// time, and a Secret mount's atomic symlink swap gives a new inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    changed: (i64, i64),
    len: u64,
    inode: (u64, u64),
}

type Stamp = [Option<FileStamp>; 2];

struct Current {
    stamp: Stamp,
    key: Arc<CertifiedKey>,
    not_after: i64,
    /// A version of the files that did not load: not tried (or logged) again until they
    /// change once more.
    failed: Option<Stamp>,
}

/// Resolves the serving certificate for each handshake, reloading it when the files
/// changed. A half-written pair keeps the previous certificate until it is whole.
pub struct ReloadingCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: RwLock<Current>,
}

impl std::fmt::Debug for ReloadingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingCert")
            .field("cert_path", &self.cert_path)
            .finish()
    }
}

fn stamp(paths: [&Path; 2]) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    paths.map(|p| {
        fs::metadata(p).ok().map(|m| FileStamp {
            modified: m.modified().ok(),
            changed: (m.ctime(), m.ctime_nsec()),
            len: m.len(),
            inode: (m.dev(), m.ino()),
        })
    })
}

fn load(cert_path: &Path, key_path: &Path) -> Result<(Arc<CertifiedKey>, i64), TlsError> {
    let file_err = |path: &Path, message: String| TlsError::File {
        path: path.to_path_buf(),
        message,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
        .map_err(|e| file_err(cert_path, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(cert_path, e.to_string()))?;
    let leaf = certs
        .first()
        .ok_or_else(|| file_err(cert_path, "no certificate in the file".into()))?;
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| file_err(cert_path, format!("not X.509: {e}")))?;
    let not_after = parsed.validity().not_after.timestamp();
    let key =
        PrivateKeyDer::from_pem_file(key_path).map_err(|e| file_err(key_path, e.to_string()))?;
    let certified = CertifiedKey::from_der(certs, key, &default_provider())
        .map_err(|e| TlsError::Mismatch(e.to_string()))?;
    Ok((Arc::new(certified), not_after))
}

/// A name a TLS client matches: an IP address, or a DNS name (RFC 1123 labels, lowercase
/// letters, digits and hyphens, at most 63 each and 253 in all; a leading `*.` wildcard).
fn is_dns_name(name: &str) -> bool {
    if name.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    let bare = name.strip_prefix("*.").unwrap_or(name);
    !bare.is_empty()
        && name.len() <= 253
        && bare.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

/// How a certificate's expiry reads at `now` (Unix seconds): expired, close, or fine.
pub fn expiry_warning(not_after: i64, now: i64) -> Option<String> {
    const WEEK: i64 = 7 * 24 * 3600;
    if not_after <= now {
        Some(format!(
            "serving certificate expired {} hours ago: the API server refuses to call this webhook (with failurePolicy Fail, every policy and Image change fails)",
            (now - not_after) / 3600
        ))
    } else if not_after - now < WEEK {
        Some(format!(
            "serving certificate expires in {} hours",
            (not_after - now) / 3600
        ))
    } else {
        None
    }
}

/// Logs [`expiry_warning`] (an error when expired): at start and at each reload.
pub fn log_expiry(path: &Path, not_after: i64, now: i64) {
    match expiry_warning(not_after, now) {
        Some(w) if not_after <= now => tracing::error!(cert = %path.display(), not_after, "{w}"),
        Some(w) => tracing::warn!(cert = %path.display(), not_after, "{w}"),
        None => {}
    }
}

impl ReloadingCert {
    pub fn new(cert_path: &Path, key_path: &Path) -> Result<ReloadingCert, TlsError> {
        let stamp = stamp([cert_path, key_path]);
        let (key, not_after) = load(cert_path, key_path)?;
        Ok(ReloadingCert {
            cert_path: cert_path.to_path_buf(),
            key_path: key_path.to_path_buf(),
            current: RwLock::new(Current {
                stamp,
                key,
                not_after,
                failed: None,
            }),
        })
    }

    /// The certificate to present now; two `stat` calls when nothing changed.
    pub fn current(&self) -> Arc<CertifiedKey> {
        let now = stamp([&self.cert_path, &self.key_path]);
        {
            let current = self.current.read().unwrap_or_else(|e| e.into_inner());
            if current.stamp == now || current.failed == Some(now) {
                return Arc::clone(&current.key);
            }
        }
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        if current.stamp != now && current.failed != Some(now) {
            match load(&self.cert_path, &self.key_path) {
                Ok((key, not_after)) => {
                    tracing::info!(cert = %self.cert_path.display(), not_after, "serving certificate reloaded");
                    let unix = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs() as i64);
                    log_expiry(&self.cert_path, not_after, unix);
                    *current = Current {
                        stamp: now,
                        key,
                        not_after,
                        failed: None,
                    };
                }
                // Tried again once the files change; the old pair serves meanwhile.
                Err(e) => {
                    tracing::warn!(error = %e, "serving certificate not reloaded; the previous one serves until the files change again");
                    current.failed = Some(now);
                }
            }
        }
        Arc::clone(&current.key)
    }

    /// Expiry of the certificate being served, in Unix seconds.
    pub fn not_after(&self) -> i64 {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .not_after
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// TLS 1.2 and 1.3 only, HTTP/2 and HTTP/1.1 by ALPN.
pub fn server_config(cert: Arc<ReloadingCert>) -> Result<ServerConfig, rustls::Error> {
    let mut config = ServerConfig::builder_with_provider(Arc::new(default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// A CA and a serving certificate for `dns_names`, as PEM.
pub struct Generated {
    pub ca_cert: String,
    pub cert: String,
    pub key: String,
}

/// The longest validity `generate` gives, in days (a hundred years).
pub const MAX_VALID_DAYS: i64 = 36_500;

pub fn generate(dns_names: &[String], valid_days: i64) -> Result<Generated, TlsError> {
    if !(1..=MAX_VALID_DAYS).contains(&valid_days) {
        return Err(TlsError::Days(valid_days));
    }
    if let Some(bad) = dns_names.iter().find(|n| !is_dns_name(n)) {
        return Err(TlsError::Name(bad.clone()));
    }
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let now = time::OffsetDateTime::now_utc();
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name
        .push(DnType::CommonName, "cip-webhook CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_before = now - time::Duration::hours(1);
    ca.not_after = now + time::Duration::days(valid_days + 1);
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca.self_signed(&ca_key)?;

    let mut leaf = CertificateParams::new(dns_names.to_vec())?;
    leaf.distinguished_name.push(
        DnType::CommonName,
        dns_names
            .first()
            .map(String::as_str)
            .unwrap_or("cip-webhook"),
    );
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.not_before = now - time::Duration::hours(1);
    leaf.not_after = now + time::Duration::days(valid_days);
    let key = KeyPair::generate()?;
    let issuer = Issuer::new(ca, ca_key);
    let cert = leaf.signed_by(&key, &issuer)?;
    Ok(Generated {
        ca_cert: ca_cert.pem(),
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

#[cfg(test)]
mod expiry_tests {
    use super::expiry_warning;

    #[test]
    fn only_names_a_client_can_match_are_certified() {
        for good in [
            "localhost",
            "cip-webhook.cip-webhook.svc",
            "*.example.com",
            "10.0.0.1",
            "::1",
        ] {
            assert!(super::is_dns_name(good), "{good}");
        }
        for bad in [
            "bad name!",
            "",
            "-a.example",
            "a..b",
            "UPPER.example",
            &"a".repeat(64),
        ] {
            assert!(!super::is_dns_name(bad), "{bad}");
        }
    }

    #[test]
    fn an_expired_or_expiring_certificate_is_said() {
        let now = 1_800_000_000;
        assert!(expiry_warning(now - 7200, now)
            .unwrap()
            .contains("expired 2 hours ago"));
        assert!(expiry_warning(now + 48 * 3600, now)
            .unwrap()
            .contains("expires in 48 hours"));
        assert_eq!(expiry_warning(now + 30 * 24 * 3600, now), None);
    }
}
