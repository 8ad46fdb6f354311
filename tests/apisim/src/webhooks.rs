//! Admission as the API server runs it: the stored webhook configurations' matching
//! webhooks called over HTTPS trusting only their caBundle, with failurePolicy,
//! timeoutSeconds, JSON patches, warnings and the API server's denial wording.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};

use crate::resources::ResourceType;
use crate::selector::LabelSelector;
use crate::{ApiError, Sim, User};

/// What a request is doing, for rule matching and for the AdmissionReview.
pub struct Attributes<'a> {
    pub operation: &'static str,
    pub resource: &'a ResourceType,
    pub version: &'a str,
    pub subresource: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
    pub user: &'a User,
    pub dry_run: bool,
    pub field_manager: Option<&'a str>,
}

fn listed(list: &Value, wanted: &str) -> bool {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .any(|v| v == "*" || v == wanted)
}

fn resource_listed(list: &Value, plural: &str, sub: &str) -> bool {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .any(|r| {
            let (rp, rs) = r.split_once('/').unwrap_or((r, ""));
            (rp == "*" || rp == plural) && (rs == sub || rs == "*")
        })
}

fn matches(
    hook: &Value,
    a: &Attributes,
    object: Option<&Value>,
    old: Option<&Value>,
) -> Result<bool, String> {
    let rule_hit = hook["rules"].as_array().into_iter().flatten().any(|r| {
        listed(&r["operations"], a.operation)
            && listed(&r["apiGroups"], &a.resource.group)
            && listed(&r["apiVersions"], a.version)
            && resource_listed(&r["resources"], &a.resource.plural, a.subresource)
    });
    if !rule_hit {
        return Ok(false);
    }
    if hook["objectSelector"].is_object() {
        let selector = LabelSelector::from_object(&hook["objectSelector"])?;
        let hit = [object, old]
            .into_iter()
            .flatten()
            .any(|o| selector.matches(o));
        if !hit {
            return Ok(false);
        }
    }
    match_conditions(hook, a, object, old)
}

/// `matchConditions` (admissionregistration v1, GA in 1.30): CEL expressions over
/// `object`, `oldObject` and `request`; the webhook is called only when all are true. An
/// expression that fails to evaluate is an error, which failurePolicy then decides.
fn match_conditions(
    hook: &Value,
    a: &Attributes,
    object: Option<&Value>,
    old: Option<&Value>,
) -> Result<bool, String> {
    let conditions = hook["matchConditions"].as_array();
    if conditions.is_none_or(|c| c.is_empty()) {
        return Ok(true);
    }
    let context = cel_context(a, object, old)?;
    for condition in conditions.into_iter().flatten() {
        let name = condition["name"].as_str().unwrap_or_default();
        let expression = condition["expression"].as_str().unwrap_or_default();
        let program = cel::Program::compile(expression)
            .map_err(|e| format!("compilation of match condition {name:?} failed: {e}"))?;
        match program.execute(&context) {
            Ok(cel::Value::Bool(true)) => {}
            Ok(cel::Value::Bool(false)) => return Ok(false),
            Ok(other) => {
                return Err(format!(
                    "match condition {name:?} evaluated to {other:?}, not a bool"
                ))
            }
            Err(e) => return Err(format!("failed to evaluate match condition {name:?}: {e}")),
        }
    }
    Ok(true)
}

/// `object`, `oldObject` and `request`, as admission CEL sees them.
fn cel_context(
    a: &Attributes,
    object: Option<&Value>,
    old: Option<&Value>,
) -> Result<cel::Context<'static>, String> {
    let request = review(a, "", object, old)["request"].clone();
    let variable = |v: &Value| cel::to_value(v).map_err(|e| e.to_string());
    let mut context = cel::Context::default();
    context.add_variable_from_value("object", variable(object.unwrap_or(&Value::Null))?);
    context.add_variable_from_value("oldObject", variable(old.unwrap_or(&Value::Null))?);
    context.add_variable_from_value("request", variable(&request)?);
    Ok(context)
}

fn review(a: &Attributes, uid: &str, object: Option<&Value>, old: Option<&Value>) -> Value {
    let t = a.resource;
    let kind = json!({"group": t.group, "version": a.version, "kind": t.kind});
    let resource = json!({"group": t.group, "version": a.version, "resource": t.plural});
    let options_kind = match a.operation {
        "CREATE" => "CreateOptions",
        "UPDATE" => "UpdateOptions",
        _ => "DeleteOptions",
    };
    let mut options = json!({"kind": options_kind, "apiVersion": "meta.k8s.io/v1"});
    if let Some(m) = a.field_manager {
        options["fieldManager"] = json!(m);
    }
    let mut request = json!({
        "uid": uid,
        "kind": kind,
        "resource": resource,
        "requestKind": kind,
        "requestResource": resource,
        "name": a.name,
        "operation": a.operation,
        "userInfo": {"username": a.user.name, "groups": a.user.groups},
        "object": object.cloned().unwrap_or(Value::Null),
        "oldObject": old.cloned().unwrap_or(Value::Null),
        "dryRun": a.dry_run,
        "options": options,
    });
    if !a.subresource.is_empty() {
        request["subResource"] = json!(a.subresource);
    }
    if !a.namespace.is_empty() {
        request["namespace"] = json!(a.namespace);
    }
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request})
}

/// Where to connect, the name to verify, and the URL as the API server prints it.
fn endpoint(
    sim: &Sim,
    hook: &Value,
    timeout: u64,
) -> Result<(String, String, String, String), String> {
    let config = &hook["clientConfig"];
    if let Some(url) = config["url"].as_str() {
        let rest = url
            .strip_prefix("https://")
            .ok_or_else(|| format!("webhook URL {url:?} is not https"))?;
        let (hostport, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p.to_string()),
            None => (hostport.to_string(), "443".to_string()),
        };
        let path = if path.is_empty() { "/" } else { path };
        let shown = format!("https://{hostport}{path}?timeout={timeout}s");
        return Ok((
            format!("{host}:{port}"),
            host,
            format!("{path}?timeout={timeout}s"),
            shown,
        ));
    }
    let service = &config["service"];
    let (ns, name) = (
        service["namespace"].as_str().unwrap_or_default(),
        service["name"].as_str().unwrap_or_default(),
    );
    let port = service["port"].as_u64().unwrap_or(443);
    let path = service["path"].as_str().unwrap_or("/");
    let host = format!("{name}.{ns}.svc");
    let shown = format!("https://{host}:{port}{path}?timeout={timeout}s");
    let addr = sim
        .service_address(ns, name, port as u16)
        .ok_or_else(|| format!("Post {shown:?}: service \"{ns}/{name}\" not found"))?;
    Ok((addr, host, format!("{path}?timeout={timeout}s"), shown))
}

async fn post(
    connect: &str,
    host: &str,
    path: &str,
    ca_bundle: &str,
    body: Vec<u8>,
) -> Result<Vec<u8>, String> {
    let pem = base64::engine::general_purpose::STANDARD
        .decode(ca_bundle)
        .map_err(|e| format!("invalid caBundle: {e}"))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| format!("invalid caBundle: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("invalid caBundle: {e}"))?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(connect).await.map_err(|e| {
        let cause = if e.kind() == std::io::ErrorKind::ConnectionRefused {
            "connect: connection refused".to_string()
        } else {
            e.to_string()
        };
        format!("dial tcp {connect}: {cause}")
    })?;
    let name = ServerName::try_from(host.to_string()).map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("tls: failed to verify certificate: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let request = hyper::Request::post(path)
        .header("host", host)
        .header("content-type", "application/json")
        .header("accept", "application/json, */*")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    if !status.is_success() {
        return Err(format!(
            "the server responded with the status code {} but did not return more information",
            status.as_u16()
        ));
    }
    Ok(body.to_vec())
}

/// The denial as `webhook/errors.ToStatusErr` builds it.
fn denial(name: &str, status: &Value) -> ApiError {
    let denied = format!("admission webhook {name:?} denied the request");
    let message = status["message"].as_str().filter(|m| !m.is_empty());
    let reason = status["reason"].as_str().unwrap_or_default();
    let text = match (message, reason) {
        (Some(m), _) => format!("{denied}: {m}"),
        (None, r) if !r.is_empty() => format!("{denied}: {r}"),
        _ => format!("{denied} without explanation"),
    };
    let code = status["code"].as_u64().unwrap_or(0).max(400) as u16;
    let mut out = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": text, "code": code
    });
    if !reason.is_empty() {
        out["reason"] = json!(reason);
    }
    if status["details"].is_object() {
        out["details"] = status["details"].clone();
    }
    ApiError::from_status(out)
}

enum Outcome {
    Allowed {
        patch: Option<Value>,
        warnings: Vec<String>,
    },
    /// Refused; the API server passes the webhook's warnings on with its refusal.
    Denied(ApiError, Vec<String>),
}

async fn call_one(
    sim: &Sim,
    hook: &Value,
    mutating: bool,
    body: &Value,
    uid: &str,
) -> Result<Outcome, String> {
    let name = hook["name"].as_str().unwrap_or_default();
    let timeout = hook["timeoutSeconds"].as_u64().unwrap_or(10);
    let (connect, host, path, shown) = endpoint(sim, hook, timeout)?;
    let ca = hook["clientConfig"]["caBundle"]
        .as_str()
        .unwrap_or_default();
    let bytes = serde_json::to_vec(body).expect("JSON values serialize");
    let answer = tokio::time::timeout(
        Duration::from_secs(timeout),
        post(&connect, &host, &path, ca, bytes),
    )
    .await
    .map_err(|_| format!("failed to call webhook: Post {shown:?}: context deadline exceeded"))?
    .map_err(|e| format!("failed to call webhook: Post {shown:?}: {e}"))?;
    let review: Value = serde_json::from_slice(&answer)
        .map_err(|e| format!("received invalid webhook response: {e}"))?;
    let response = &review["response"];
    if review["kind"] != json!("AdmissionReview") || !response.is_object() {
        return Err(
            "received invalid webhook response: expected an AdmissionReview with a response".into(),
        );
    }
    if response["uid"].as_str() != Some(uid) {
        return Err(format!(
            "received invalid webhook response: expected response.uid=\"{uid}\", got {:?}",
            response["uid"].as_str().unwrap_or_default()
        ));
    }
    let warnings = response["warnings"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|w| w.as_str().map(str::to_string))
        .collect();
    if response["allowed"] != json!(true) {
        return Ok(Outcome::Denied(denial(name, &response["status"]), warnings));
    }
    let patch = match response["patch"].as_str() {
        None => None,
        Some(_) if !mutating => {
            return Err(
                "received invalid webhook response: validating webhook may not return a patch"
                    .into(),
            )
        }
        Some(p) => {
            if response["patchType"] != json!("JSONPatch") {
                return Err(
                    "received invalid webhook response: patchType must be JSONPatch".into(),
                );
            }
            let raw = base64::engine::general_purpose::STANDARD
                .decode(p)
                .map_err(|e| format!("received invalid webhook response: {e}"))?;
            Some(
                serde_json::from_slice(&raw)
                    .map_err(|e| format!("received invalid webhook response: {e}"))?,
            )
        }
    };
    let _ = name;
    Ok(Outcome::Allowed { patch, warnings })
}

/// Runs the mutating or the validating webhooks for a request, in configuration name order.
/// Mutating webhooks may change `object`; warnings are collected for `Warning` headers.
pub async fn admit(
    sim: &Sim,
    mutating: bool,
    a: &Attributes<'_>,
    object: &mut Option<Value>,
    old: Option<&Value>,
    warnings: &mut Vec<String>,
) -> Result<(), ApiError> {
    let plural = if mutating {
        "mutatingwebhookconfigurations"
    } else {
        "validatingwebhookconfigurations"
    };
    let configs = sim.objects_of("admissionregistration.k8s.io", plural);
    for config in configs {
        for hook in config["webhooks"].as_array().into_iter().flatten() {
            let name = hook["name"].as_str().unwrap_or_default();
            let fail_open = hook["failurePolicy"] == json!("Ignore");
            match matches(hook, a, object.as_ref(), old) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(_) if fail_open => continue,
                Err(e) => {
                    return Err(ApiError::internal(format!(
                        "failed calling webhook {name:?}: {e}"
                    )))
                }
            }
            let uid = sim.next_uid();
            let body = review(a, &uid, object.as_ref(), old);
            match call_one(sim, hook, mutating, &body, &uid).await {
                Ok(Outcome::Denied(e, w)) => {
                    warnings.extend(w);
                    return Err(e);
                }
                Ok(Outcome::Allowed { patch, warnings: w }) => {
                    warnings.extend(w);
                    if let (Some(patch), Some(obj)) = (patch, object.as_mut()) {
                        let patch: json_patch::Patch =
                            serde_json::from_value(patch).map_err(|e| {
                                ApiError::internal(format!(
                                    "failed calling webhook {name:?}: invalid patch: {e}"
                                ))
                            })?;
                        json_patch::patch(obj, &patch).map_err(|e| {
                            ApiError::internal(format!(
                                "failed calling webhook {name:?}: patch failed: {e}"
                            ))
                        })?;
                    }
                }
                Err(_) if fail_open => {}
                Err(e) => {
                    return Err(ApiError::internal(format!(
                        "failed calling webhook {name:?}: {e}"
                    )))
                }
            }
        }
    }
    Ok(())
}
