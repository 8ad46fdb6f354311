//! The HTTP side: TLS, authentication, discovery, and the verbs over every served type.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;

use crate::events;
use crate::resources::ResourceType;
use crate::schema;
use crate::selector::{FieldSelector, LabelSelector};
use crate::ssa;
use crate::store::{self, rv_of, Inner, Managed};
use crate::webhooks::{self, Attributes};
use crate::{ApiError, FaultAction, Logged, Sim, User};

pub async fn serve(listener: TcpListener, config: Arc<rustls::ServerConfig>, sim: Arc<Sim>) {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let router = Router::new()
        .fallback(handle)
        .layer(DefaultBodyLimit::max(3 * 1024 * 1024))
        .with_state(sim);
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        // As Go's net package does for every TCP connection: a response written in
        // pieces must not wait for the client's delayed ACK.
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let service = TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), service)
                .await;
        });
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query(uri: &Uri) -> HashMap<String, String> {
    uri.query()
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn json_response(code: u16, body: &Value, warnings: &[String]) -> Response {
    let mut response = (
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        [("content-type", "application/json")],
        serde_json::to_vec(body).expect("JSON values serialize"),
    )
        .into_response();
    for w in warnings {
        let text = format!("299 - {:?}", w);
        if let Ok(v) = HeaderValue::from_str(&text) {
            response.headers_mut().append("warning", v);
        }
    }
    response
}

fn error_response(e: &ApiError, warnings: &[String]) -> Response {
    json_response(e.code, &e.status, warnings)
}

fn namespace_exists(sim: &Sim, namespace: &str) -> bool {
    let inner = sim.lock();
    let namespaces = inner.registry.get("", "namespaces").expect("built in");
    inner.get(&namespaces, "", namespace).is_some()
}

fn not_found(t: &ResourceType, name: &str) -> ApiError {
    let mut e = ApiError::new(
        404,
        "NotFound",
        format!("{} {name:?} not found", t.qualified()),
    );
    e.status["details"] = json!({"name": name, "group": t.group, "kind": t.plural});
    e
}

fn conflict(t: &ResourceType, name: &str) -> ApiError {
    let mut e = ApiError::new(
        409,
        "Conflict",
        format!(
            "Operation cannot be fulfilled on {} {name:?}: the object has been modified; please apply your changes to the latest version and try again",
            t.qualified()
        ),
    );
    e.status["details"] = json!({"name": name, "group": t.group, "kind": t.plural});
    e
}

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError::new(400, "BadRequest", message)
}

fn reason_for(code: u16) -> &'static str {
    match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        409 => "Conflict",
        410 => "Expired",
        422 => "Invalid",
        429 => "TooManyRequests",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "InternalError",
    }
}

/// The object as a client of `version` sees it; versions convert with strategy None.
fn present(t: &ResourceType, version: &str, object: &Value) -> Value {
    let mut o = object.clone();
    o["apiVersion"] = json!(t.api_version(version));
    o
}

fn version_doc() -> Value {
    json!({"major": "1", "minor": "32", "gitVersion": "v1.32.0-apisim", "gitCommit": "apisim",
           "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.23",
           "compiler": "gc", "platform": "linux/amd64"})
}

fn resource_list(sim: &Sim, group: &str, version: &str) -> Option<Value> {
    let inner = sim.lock();
    let mut resources = Vec::new();
    for t in inner.registry.all() {
        if t.group != group || t.version(version).is_none() {
            continue;
        }
        resources.push(json!({
            "name": t.plural, "singularName": t.singular, "namespaced": t.namespaced,
            "kind": t.kind, "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
            "shortNames": t.short_names, "categories": t.categories
        }));
        if t.status_subresource {
            resources.push(
                json!({"name": format!("{}/status", t.plural), "singularName": "",
                "namespaced": t.namespaced, "kind": t.kind, "verbs": ["get", "patch", "update"]}),
            );
        }
    }
    if resources.is_empty() {
        return None;
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
    )
}

fn group_doc(name: &str, versions: &[String]) -> Value {
    let vs: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{name}/{v}"), "version": v}))
        .collect();
    json!({"kind": "APIGroup", "apiVersion": "v1", "name": name, "versions": vs, "preferredVersion": vs[0]})
}

fn discovery(sim: &Sim, path: &str) -> Option<Value> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match parts.as_slice() {
        ["version"] => Some(version_doc()),
        ["api"] => Some(json!({"kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": sim.addr.to_string()}]})),
        ["api", "v1"] => resource_list(sim, "", "v1"),
        ["apis"] => {
            let groups = sim.lock().registry.groups();
            let docs: Vec<Value> = groups
                .iter()
                .filter(|(g, _)| !g.is_empty())
                .map(|(g, vs)| {
                    let mut d = group_doc(g, vs);
                    d.as_object_mut().map(|m| {
                        m.remove("kind");
                        m.remove("apiVersion")
                    });
                    d
                })
                .collect();
            Some(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": docs}))
        }
        ["apis", group] => {
            let groups = sim.lock().registry.groups();
            groups.get(*group).map(|vs| group_doc(group, vs))
        }
        ["apis", group, version] => resource_list(sim, group, version),
        _ => None,
    }
}

/// What a resource request addresses.
struct Target {
    t: Arc<ResourceType>,
    version: String,
    namespace: Option<String>,
    name: Option<String>,
    sub: String,
}

fn target(sim: &Sim, path: &str) -> Result<Option<Target>, ApiError> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match parts.as_slice() {
        ["api", v, rest @ ..] if !rest.is_empty() => ("", *v, rest),
        ["apis", g, v, rest @ ..] if !rest.is_empty() => (*g, *v, rest),
        _ => return Ok(None),
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(ns.to_string()), rest),
        _ => (None, rest),
    };
    let plural = rest[0];
    let t = sim
        .lock()
        .registry
        .get(group, plural)
        .filter(|t| t.version(version).is_some())
        .ok_or_else(|| {
            ApiError::new(
                404,
                "NotFound",
                "the server could not find the requested resource",
            )
        })?;
    Ok(Some(Target {
        t,
        version: version.to_string(),
        namespace,
        name: rest.get(1).map(|s| s.to_string()),
        sub: rest.get(2).map(|s| s.to_string()).unwrap_or_default(),
    }))
}

fn age(object: &Value) -> String {
    let created = object["metadata"]["creationTimestamp"]
        .as_str()
        .and_then(|s| {
            time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
        });
    match created {
        Some(c) => {
            let secs = (time::OffsetDateTime::now_utc() - c).whole_seconds().max(0);
            if secs < 120 {
                format!("{secs}s")
            } else if secs < 7200 {
                format!("{}m", secs / 60)
            } else {
                format!("{}h", secs / 3600)
            }
        }
        None => "<unknown>".into(),
    }
}

fn table(objects: &[Value], rv: u64) -> Value {
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            json!({"cells": [o["metadata"]["name"], age(o)],
                   "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"]}})
        })
        .collect();
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": rv.to_string()},
        "columnDefinitions": [
            {"name": "Name", "type": "string", "format": "name", "description": "Name of the object", "priority": 0},
            {"name": "Age", "type": "string", "format": "", "description": "Time since creation", "priority": 0}
        ],
        "rows": rows})
}

fn wants_table(headers: &HeaderMap) -> bool {
    headers
        .get("accept")
        .and_then(|a| a.to_str().ok())
        .is_some_and(|a| a.contains("as=Table"))
}

async fn handle(
    State(sim): State<Arc<Sim>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let params = query(&uri);
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap_or_default()
        .to_string();
    let mut log = Logged {
        method: method.to_string(),
        verb: "discovery".into(),
        group: String::new(),
        resource: String::new(),
        subresource: String::new(),
        namespace: String::new(),
        name: String::new(),
        user: String::new(),
        code: 0,
        field_manager: params.get("fieldManager").cloned().unwrap_or_default(),
        content_type: content_type.clone(),
        path: path.clone(),
        at: std::time::Instant::now(),
    };
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    let response = match sim.user(token) {
        None => error_response(&ApiError::new(401, "Unauthorized", "Unauthorized"), &[]),
        Some(user) => {
            log.user = user.name.clone();
            route(
                &sim,
                &method,
                &path,
                &params,
                &headers,
                &content_type,
                &body,
                &user,
                &mut log,
            )
            .await
        }
    };
    log.code = response.status().as_u16();
    log.at = std::time::Instant::now();
    sim.record(log);
    response
}

#[allow(clippy::too_many_arguments)]
async fn route(
    sim: &Arc<Sim>,
    method: &Method,
    path: &str,
    params: &HashMap<String, String>,
    headers: &HeaderMap,
    content_type: &str,
    body: &[u8],
    user: &User,
    log: &mut Logged,
) -> Response {
    if method == Method::GET {
        if let Some(doc) = discovery(sim, path) {
            return json_response(200, &doc, &[]);
        }
    }
    let target = match target(sim, path) {
        Ok(Some(t)) => t,
        Ok(None) => {
            return error_response(
                &ApiError::new(
                    404,
                    "NotFound",
                    "the server could not find the requested resource",
                ),
                &[],
            )
        }
        Err(e) => return error_response(&e, &[]),
    };
    let watching = matches!(params.get("watch").map(String::as_str), Some("true" | "1"));
    let verb = match (method.as_str(), target.name.is_some()) {
        ("GET", true) => "get",
        ("GET", false) if watching => "watch",
        ("GET", false) => "list",
        ("POST", false) => "create",
        ("PUT", true) => "update",
        ("PATCH", true) => "patch",
        ("DELETE", true) => "delete",
        _ => {
            return error_response(
                &ApiError::new(
                    405,
                    "MethodNotAllowed",
                    format!("{method} is not supported here"),
                ),
                &[],
            )
        }
    };
    log.verb = verb.into();
    log.group = target.t.group.clone();
    log.resource = target.t.plural.clone();
    log.subresource = target.sub.clone();
    log.namespace = target.namespace.clone().unwrap_or_default();
    log.name = target.name.clone().unwrap_or_default();
    match sim.take_fault(verb, &target.t.plural) {
        Some(FaultAction::Fail(code)) => {
            let message = format!("injected fault: {verb} {} failed", target.t.qualified());
            return error_response(&ApiError::new(code, reason_for(code), message), &[]);
        }
        Some(FaultAction::Conflict) => {
            return error_response(
                &conflict(&target.t, target.name.as_deref().unwrap_or_default()),
                &[],
            )
        }
        Some(FaultAction::Delay(d)) => tokio::time::sleep(d).await,
        None => {}
    }
    let result = match verb {
        "get" => get(sim, &target, headers),
        "list" => list(sim, &target, params, headers),
        "watch" => return watch(sim, &target, params),
        "delete" => delete(sim, &target, params, user).await,
        _ => {
            let mut warnings = Vec::new();
            let r = write(
                sim,
                &target,
                verb,
                params,
                content_type,
                body,
                user,
                &mut warnings,
            )
            .await;
            return match r {
                Ok((code, v)) => json_response(code, &v, &warnings),
                Err(e) => error_response(&e, &warnings),
            };
        }
    };
    match result {
        Ok(v) => json_response(200, &v, &[]),
        Err(e) => error_response(&e, &[]),
    }
}

fn get(sim: &Sim, target: &Target, headers: &HeaderMap) -> Result<Value, ApiError> {
    let name = target.name.as_deref().unwrap_or_default();
    let inner = sim.lock();
    let stored = inner
        .get(
            &target.t,
            target.namespace.as_deref().unwrap_or_default(),
            name,
        )
        .ok_or_else(|| not_found(&target.t, name))?;
    if wants_table(headers) {
        return Ok(table(std::slice::from_ref(&stored.object), inner.rv));
    }
    Ok(present(&target.t, &target.version, &stored.object))
}

fn selectors(params: &HashMap<String, String>) -> Result<(LabelSelector, FieldSelector), ApiError> {
    let labels = LabelSelector::parse(
        params
            .get("labelSelector")
            .map(String::as_str)
            .unwrap_or_default(),
    )
    .map_err(bad_request)?;
    let fields = FieldSelector::parse(
        params
            .get("fieldSelector")
            .map(String::as_str)
            .unwrap_or_default(),
    )
    .map_err(bad_request)?;
    Ok((labels, fields))
}

fn list(
    sim: &Sim,
    target: &Target,
    params: &HashMap<String, String>,
    headers: &HeaderMap,
) -> Result<Value, ApiError> {
    let (labels, fields) = selectors(params)?;
    let inner = sim.lock();
    let items: Vec<Value> = inner
        .list(&target.t, target.namespace.as_deref())
        .filter(|o| labels.matches(o) && fields.matches(o))
        .map(|o| present(&target.t, &target.version, o))
        .collect();
    if wants_table(headers) {
        return Ok(table(&items, inner.rv));
    }
    Ok(json!({
        "apiVersion": target.t.api_version(&target.version),
        "kind": format!("{}List", target.t.kind),
        "metadata": {"resourceVersion": inner.rv.to_string()},
        "items": items
    }))
}

fn line(kind: &str, object: &Value) -> Bytes {
    let mut v = serde_json::to_vec(&json!({"type": kind, "object": object}))
        .expect("JSON values serialize");
    v.push(b'\n');
    Bytes::from(v)
}

fn watch(sim: &Arc<Sim>, target: &Target, params: &HashMap<String, String>) -> Response {
    let (labels, fields) = match selectors(params) {
        Ok(s) => s,
        Err(e) => return error_response(&e, &[]),
    };
    let from: Option<u64> = params
        .get("resourceVersion")
        .filter(|v| !v.is_empty())
        .and_then(|v| v.parse().ok());
    let bookmarks = params
        .get("allowWatchBookmarks")
        .is_some_and(|v| v == "true");
    let timeout = params
        .get("timeoutSeconds")
        .and_then(|v| v.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(1800));
    let t = Arc::clone(&target.t);
    let version = target.version.clone();
    let namespace = target.namespace.clone();
    let resource = t.key();
    let (mut events, initial, start, gone) = {
        let inner = sim.lock();
        let events = inner.events.subscribe();
        match from {
            None | Some(0) => {
                let initial: Vec<Arc<store::Event>> = inner
                    .list(&t, namespace.as_deref())
                    .map(|o| {
                        Arc::new(store::Event {
                            rv: 0,
                            resource: resource.clone(),
                            kind: "ADDED",
                            object: o.clone(),
                            previous: None,
                        })
                    })
                    .collect();
                (events, initial, inner.rv, None)
            }
            Some(rv) => match inner.since(&resource, rv) {
                Some(evs) => (events, evs, inner.rv, None),
                None => (events, Vec::new(), inner.rv, Some((rv, inner.compacted))),
            },
        }
    };
    let (tx, rx) = mpsc::channel::<Result<Bytes, Infallible>>(1024);
    let mut closed = sim.close_watches.subscribe();
    let every = sim.bookmark_every;
    let keep = move |o: &Value| {
        namespace
            .as_deref()
            .is_none_or(|ns| o["metadata"]["namespace"].as_str() == Some(ns))
            && labels.matches(o)
            && fields.matches(o)
    };
    let kind = t.kind.clone();
    let api_version = t.api_version(&version);
    tokio::spawn(async move {
        if let Some((rv, compacted)) = gone {
            let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": format!("too old resource version: {rv} ({compacted})"), "reason": "Expired", "code": 410});
            let _ = tx.send(Ok(line("ERROR", &status))).await;
            return;
        }
        for ev in initial {
            if let Some((kind, object)) = as_seen(&ev, &keep) {
                if tx
                    .send(Ok(line(kind, &present(&t, &version, &object))))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
        let mut last = start;
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tokio::select! {
                ev = events.recv() => match ev {
                    Ok(ev) if ev.rv > last => {
                        last = ev.rv;
                        if ev.resource != resource {
                            continue;
                        }
                        if let Some((kind, object)) = as_seen(&ev, &keep) {
                            if tx.send(Ok(line(kind, &present(&t, &version, &object)))).await.is_err() {
                                return;
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(RecvError::Lagged(_)) | Err(RecvError::Closed) => return,
                },
                _ = tick.tick(), if bookmarks => {
                    let mark = json!({"kind": kind, "apiVersion": api_version,
                        "metadata": {"resourceVersion": last.to_string()}});
                    if tx.send(Ok(line("BOOKMARK", &mark))).await.is_err() {
                        return;
                    }
                }
                _ = &mut deadline => return,
                _ = closed.changed() => return,
                _ = tx.closed() => return,
            }
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    (
        StatusCode::OK,
        [("content-type", "application/json")],
        Body::from_stream(stream),
    )
        .into_response()
}

/// An event as a watch with selectors sees it (the watch cache's convertToWatchEvent): a
/// change that makes an object stop matching is DELETED, with its previous content at
/// the event's resourceVersion; one that makes it start matching is ADDED.
fn as_seen(ev: &store::Event, keep: &impl Fn(&Value) -> bool) -> Option<(&'static str, Value)> {
    let now = ev.kind != "DELETED" && keep(&ev.object);
    let before = match (&ev.previous, ev.kind) {
        (Some(previous), _) => keep(previous),
        (None, "DELETED") => keep(&ev.object),
        (None, _) => false,
    };
    match (now, before, ev.kind) {
        (true, false, _) => Some(("ADDED", ev.object.clone())),
        (true, true, kind) => Some((kind, ev.object.clone())),
        (false, true, "DELETED") => Some(("DELETED", ev.object.clone())),
        (false, true, _) => {
            let mut previous = ev.previous.clone().expect("a previous version");
            previous["metadata"]["resourceVersion"] =
                ev.object["metadata"]["resourceVersion"].clone();
            Some(("DELETED", previous))
        }
        (false, false, _) => None,
    }
}

fn field_manager(params: &HashMap<String, String>, verb: &str) -> String {
    params
        .get("fieldManager")
        .cloned()
        .unwrap_or_else(|| format!("unknown-{verb}"))
}

fn decode(content_type: &str, body: &[u8]) -> Result<Value, ApiError> {
    if content_type == "application/apply-patch+yaml" {
        let text = std::str::from_utf8(body).map_err(|e| bad_request(e.to_string()))?;
        return serde_saphyr::from_str(text)
            .map_err(|e| bad_request(format!("error decoding YAML: {e}")));
    }
    serde_json::from_slice(body)
        .map_err(|e| bad_request(format!("the body of the request could not be decoded: {e}")))
}

/// Unknown fields are refused, warned about or dropped, as fieldValidation asks.
fn prune(
    t: &ResourceType,
    version: &str,
    object: &mut Value,
    validation: &str,
    warnings: &mut Vec<String>,
) -> Result<(), ApiError> {
    let Some(schema) = t.version(version).and_then(|v| v.schema.clone()) else {
        return Ok(());
    };
    let mut unknown = Vec::new();
    schema::prune(&schema.openapi, object, "", &mut unknown);
    schema::default(&schema.openapi, object);
    if unknown.is_empty() {
        return Ok(());
    }
    match validation {
        "Strict" => {
            let list: Vec<String> = unknown
                .iter()
                .map(|u| format!("unknown field {u:?}"))
                .collect();
            Err(bad_request(format!(
                "strict decoding error: {}",
                list.join(", ")
            )))
        }
        "Ignore" => Ok(()),
        _ => {
            warnings.extend(unknown.iter().map(|u| format!("unknown field {u:?}")));
            Ok(())
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn write(
    sim: &Arc<Sim>,
    target: &Target,
    verb: &str,
    params: &HashMap<String, String>,
    content_type: &str,
    body: &[u8],
    user: &User,
    warnings: &mut Vec<String>,
) -> Result<(u16, Value), ApiError> {
    let t = &target.t;
    let namespace = target.namespace.clone().unwrap_or_default();
    if t.namespaced && namespace.is_empty() {
        return Err(bad_request(format!(
            "{} is namespaced: a namespace is required",
            t.plural
        )));
    }
    let manager = field_manager(params, verb);
    let input = decode(content_type, body)?;
    let dry_run = params.get("dryRun").is_some_and(|v| v == "All");
    let validation = params
        .get("fieldValidation")
        .map(String::as_str)
        .unwrap_or("Warn");
    for _attempt in 0..8 {
        let current = {
            let inner = sim.lock();
            target
                .name
                .as_deref()
                .and_then(|n| inner.get(t, &namespace, n).cloned())
        };
        // NamespaceLifecycle: nothing is created in a namespace that does not exist.
        if current.is_none() && t.namespaced && !namespace_exists(sim, &namespace) {
            let mut e = ApiError::new(
                404,
                "NotFound",
                format!("namespaces {namespace:?} not found"),
            );
            e.status["details"] = json!({"name": namespace, "kind": "namespaces"});
            return Err(e);
        }
        let read_rv = current.as_ref().and_then(|c| rv_of(&c.object));
        let mut managed: Managed = current
            .as_ref()
            .map(|c| c.managed.clone())
            .unwrap_or_default();
        let old = current
            .as_ref()
            .map(|c| present(t, &target.version, &c.object));
        let mut new = match verb {
            // The storage layer's check, which the API server answers as a plain 500.
            "create" if rv_of(&input).is_some() => {
                return Err(ApiError::new(500, "", "resourceVersion should not be set on objects to be created"));
            }
            "create" => input.clone(),
            "update" => {
                let old = old.as_ref().ok_or_else(|| not_found(t, target.name.as_deref().unwrap_or_default()))?;
                match rv_of(&input) {
                    // The custom resource handler's check, named by resource, not kind.
                    None if t.custom => {
                        return Err(ApiError::from_status(schema::invalid_status(
                            &t.qualified(), &t.group, &t.plural,
                            target.name.as_deref().unwrap_or_default(),
                            &[schema::FieldError { field: "metadata.resourceVersion".into(), reason: "FieldValueInvalid",
                                body: "Invalid value: 0: must be specified for an update".into() }],
                        )));
                    }
                    Some(rv) if Some(rv) != read_rv => return Err(conflict(t, target.name.as_deref().unwrap_or_default())),
                    _ => {}
                }
                let mut new = input.clone();
                ssa::record_update(old, &new, &mut managed, &manager);
                if new["metadata"]["resourceVersion"].is_null() {
                    new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
                }
                new
            }
            _ => match (content_type, &old) {
                ("application/apply-patch+yaml", _) => {
                    let Some(m) = params.get("fieldManager") else {
                        return Err(bad_request("PATCH, fieldManager: Required value: is required for apply patch"));
                    };
                    let force = params.get("force").is_some_and(|f| f == "true");
                    let base = old.clone().unwrap_or_else(|| json!({"metadata": {}}));
                    let mut applied = ssa::apply(&base, &mut managed, &input, m, force).map_err(|msg| {
                        let mut e = ApiError::new(409, "Conflict", msg);
                        e.status["details"] = json!({"name": target.name, "group": t.group, "kind": t.plural});
                        e
                    })?;
                    if let Some(rv) = rv_of(&input) {
                        if Some(rv) != read_rv {
                            return Err(conflict(t, target.name.as_deref().unwrap_or_default()));
                        }
                    }
                    if old.is_none() {
                        applied["metadata"]["name"] = json!(target.name);
                    }
                    applied
                }
                (_, None) => return Err(not_found(t, target.name.as_deref().unwrap_or_default())),
                ("application/merge-patch+json", Some(old)) => {
                    let mut doc = old.clone();
                    json_patch::merge(&mut doc, &input);
                    ssa::record_update(old, &doc, &mut managed, &manager);
                    doc
                }
                ("application/strategic-merge-patch+json", Some(old)) if !t.custom => {
                    let mut doc = old.clone();
                    json_patch::merge(&mut doc, &input);
                    ssa::record_update(old, &doc, &mut managed, &manager);
                    doc
                }
                ("application/json-patch+json", Some(old)) => {
                    let patch: json_patch::Patch = serde_json::from_value(input.clone())
                        .map_err(|e| bad_request(format!("invalid JSON patch: {e}")))?;
                    let mut doc = old.clone();
                    json_patch::patch(&mut doc, &patch).map_err(|e| {
                        ApiError::new(422, "Invalid", format!("the server rejected our request due to an error in our request: {e}"))
                    })?;
                    ssa::record_update(old, &doc, &mut managed, &manager);
                    doc
                }
                _ => {
                    return Err(ApiError::new(415, "UnsupportedMediaType", format!(
                        "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml (got {content_type:?})"
                    )))
                }
            },
        };
        if !new.is_object() || !new["metadata"].is_object() && !new["metadata"].is_null() {
            return Err(bad_request(
                "the body of the request must be an object with metadata",
            ));
        }
        if let (Some(rv), true) = (rv_of(&new), verb == "patch") {
            if Some(rv) != read_rv {
                return Err(conflict(t, target.name.as_deref().unwrap_or_default()));
            }
        }
        let kind = new["kind"].as_str().unwrap_or(&t.kind).to_string();
        if kind != t.kind {
            return Err(bad_request(format!(
                "the object's kind {kind:?} does not match the resource {:?}",
                t.plural
            )));
        }
        new["apiVersion"] = json!(t.api_version(&target.version));
        new["kind"] = json!(t.kind);
        if new["metadata"].is_null() {
            new["metadata"] = json!({});
        }
        if verb == "create"
            && new["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .is_empty()
        {
            if let Some(prefix) = new["metadata"]["generateName"].as_str() {
                new["metadata"]["name"] = json!(format!("{prefix}{}", &sim.next_uid()[30..]));
            }
        }
        let name = new["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if let Some(path_name) = target.name.as_deref() {
            if name != path_name {
                return Err(bad_request(format!(
                    "the name of the object ({name}) does not match the name on the URL ({path_name})"
                )));
            }
        }
        if t.namespaced {
            new["metadata"]["namespace"] = json!(namespace);
        }
        match (target.sub.as_str(), &old) {
            ("status", Some(old)) => {
                let status = new["status"].clone();
                new = old.clone();
                new["status"] = status;
            }
            ("status", None) => return Err(not_found(t, &name)),
            ("", _) if t.status_subresource => match &old {
                Some(old) => new["status"] = old["status"].clone(),
                None => {
                    new.as_object_mut().map(|m| m.remove("status"));
                }
            },
            _ => {}
        }
        if let Some(m) = new.as_object_mut() {
            if m.get("status").is_some_and(Value::is_null) {
                m.remove("status");
            }
        }
        prune(t, &target.version, &mut new, validation, warnings)?;
        let operation = if old.is_some() { "UPDATE" } else { "CREATE" };
        let attrs = Attributes {
            operation,
            resource: t,
            version: &target.version,
            subresource: &target.sub,
            namespace: &namespace,
            name: &name,
            user,
            dry_run,
            field_manager: params.get("fieldManager").map(String::as_str),
        };
        let mut object = Some(new);
        webhooks::admit(sim, true, &attrs, &mut object, old.as_ref(), warnings).await?;
        let mut new = object.take().expect("mutation keeps the object");
        prune(t, &target.version, &mut new, "Ignore", warnings)?;
        // A custom resource's schema and CEL rules; a built-in type's own checks.
        let mut errors = events::validate(t, &new, old.as_ref());
        if let Some(schema) = t.version(&target.version).and_then(|v| v.schema.clone()) {
            errors.extend(schema::validate(&schema, &new, old.as_ref()));
        }
        if !errors.is_empty() {
            // events.k8s.io Events are core Events inside the API server: its errors name
            // the internal kind.
            let group = if t.group == "events.k8s.io" {
                ""
            } else {
                t.group.as_str()
            };
            let qualified = if group.is_empty() {
                t.kind.clone()
            } else {
                t.qualified_kind()
            };
            return Err(ApiError::from_status(schema::invalid_status(
                &qualified, group, &t.kind, &name, &errors,
            )));
        }
        let mut object = Some(new);
        webhooks::admit(sim, false, &attrs, &mut object, old.as_ref(), warnings).await?;
        let new = object.take().expect("validation keeps the object");
        if verb == "create" {
            managed = Managed::new();
            ssa::record_update(&json!({}), &new, &mut managed, &manager);
        }
        let code = if old.is_some() { 200 } else { 201 };
        if dry_run {
            return Ok((code, new));
        }
        let stored = {
            let mut inner = sim.lock();
            let now = inner.get(t, &namespace, &name).map(|s| rv_of(&s.object));
            match (now, read_rv) {
                (Some(_), None) if verb == "create" => {
                    let mut e = ApiError::new(
                        409,
                        "AlreadyExists",
                        format!("{} {name:?} already exists", t.qualified()),
                    );
                    e.status["details"] = json!({"name": name, "group": t.group, "kind": t.plural});
                    return Err(e);
                }
                (now, read) if now.flatten() != read => {
                    if verb == "update" {
                        return Err(conflict(t, &name));
                    }
                    continue;
                }
                _ => {}
            }
            Inner::put(&mut inner, t, new, managed)
        };
        return Ok((code, present(t, &target.version, &stored)));
    }
    Err(conflict(t, target.name.as_deref().unwrap_or_default()))
}

async fn delete(
    sim: &Arc<Sim>,
    target: &Target,
    params: &HashMap<String, String>,
    user: &User,
) -> Result<Value, ApiError> {
    let t = &target.t;
    let namespace = target.namespace.clone().unwrap_or_default();
    let name = target.name.clone().unwrap_or_default();
    let current = sim
        .lock()
        .get(t, &namespace, &name)
        .map(|s| s.object.clone());
    let old = current.ok_or_else(|| not_found(t, &name))?;
    let old = present(t, &target.version, &old);
    let dry_run = params.get("dryRun").is_some_and(|v| v == "All");
    let attrs = Attributes {
        operation: "DELETE",
        resource: t,
        version: &target.version,
        subresource: "",
        namespace: &namespace,
        name: &name,
        user,
        dry_run,
        field_manager: None,
    };
    let mut warnings = Vec::new();
    let mut none = None;
    webhooks::admit(sim, true, &attrs, &mut none, Some(&old), &mut warnings).await?;
    webhooks::admit(sim, false, &attrs, &mut none, Some(&old), &mut warnings).await?;
    if dry_run {
        return Ok(old);
    }
    let deleted = sim.lock().delete(t, &namespace, &name);
    let object = deleted.ok_or_else(|| not_found(t, &name))?;
    Ok(present(t, &target.version, &object))
}
