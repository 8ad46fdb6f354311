//! Hostile input, round 2 (issue 25): slow uploads that would hold the body budget, the
//! metrics port under slow-header clients, shedding that must spare fresh connections,
//! keep-alive as documented, and answers that say what went wrong.

use testkit::server as harness;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use futures_util::StreamExt;
use harness::*;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::StatusCode;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use cip_webhook::webhook::admission;
use cip_webhook::webhook::server::{self, App, Limits};

fn good_review() -> Vec<u8> {
    review(
        "ClusterImagePolicy",
        "CREATE",
        "u",
        policy("v1", &["example.org"]),
    )
}

/// The time to an answer to a review on a fresh connection, failing past `within`.
async fn answered_within(s: &Server, within: Duration) -> Duration {
    let started = Instant::now();
    let (status, _) = tokio::time::timeout(within, send(s, "POST", "/validate", good_review()))
        .await
        .unwrap_or_else(|_| panic!("a review was not answered within {within:?}"));
    assert_eq!(status, StatusCode::OK);
    started.elapsed()
}

/// An HTTP/1.1 upload that declares `declared` bytes and sends `sent` of them, then one
/// byte a second; what the server answered, once it did.
async fn slow_upload(s: &Server, declared: usize, sent: usize) -> String {
    let mut tls = connect(s.addr, &s.ca, &[b"http/1.1"]).await.unwrap();
    let head = format!(
        "POST /validate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {declared}\r\n\r\n"
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    tls.write_all(&vec![b' '; sent]).await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        tokio::select! {
            read = tls.read(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            },
            () = tokio::time::sleep(Duration::from_secs(1)) => {
                if tls.write_all(b" ").await.is_err() {
                    break;
                }
            }
        }
        if answer.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_uploads_cannot_starve_reviews() {
    let limits = Limits {
        max_connections: 64,
        ..Limits::default()
    };
    let s = Arc::new(start_with(admission::Config::default(), limits, Some(&STATE)).await);
    // 22 uploads that declare 3 MiB each (66 MiB, twice the body budget) and send a byte a
    // second, in two groups 0.5 s apart, as the attack did.
    let mut hogs = Vec::new();
    for group in 0..2 {
        for _ in 0..11 {
            let s = Arc::clone(&s);
            hogs.push(tokio::spawn(
                async move { slow_upload(&s, 3 << 20, 1).await },
            ));
        }
        if group == 0 {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut slowest = Duration::ZERO;
    for _ in 0..20 {
        slowest = slowest.max(answered_within(&s, Duration::from_secs(3)).await);
    }
    eprintln!("slowest of 20 reviews beside 22 slow uploads: {slowest:?}");
    // The uploads get their 408 at the body deadline (2 s), not the request's (10 s).
    for hog in hogs {
        let answer = tokio::time::timeout(Duration::from_secs(8), hog)
            .await
            .expect("a slow upload was cut at its body deadline")
            .unwrap();
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_http2_streams_without_a_length_cannot_starve_reviews() {
    let s = start_with(
        admission::Config::default(),
        Limits::default(),
        Some(&STATE),
    )
    .await;
    let tls = connect(s.addr, &s.ca, &[b"h2"]).await.unwrap();
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    // 16 streams, no content-length (48 MiB at --max-body each): one byte, then nothing.
    let mut streams = Vec::new();
    for _ in 0..16 {
        let mut sender = sender.clone();
        let body = StreamBody::new(
            futures_util::stream::iter([Ok::<_, Infallible>(Frame::data(Bytes::from("{")))])
                .chain(futures_util::stream::pending()),
        );
        let request = hyper::Request::post("https://localhost/validate")
            .body(body)
            .unwrap();
        streams.push(tokio::spawn(async move {
            let started = Instant::now();
            let response = sender.send_request(request).await;
            (response.map(|r| r.status()), started.elapsed())
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..10 {
        answered_within(&s, Duration::from_secs(3)).await;
    }
    for stream in streams {
        let (status, took) = tokio::time::timeout(Duration::from_secs(8), stream)
            .await
            .expect("a stalled stream was answered at its body deadline")
            .unwrap();
        assert_eq!(status.unwrap(), StatusCode::REQUEST_TIMEOUT);
        assert!(took < Duration::from_secs(6), "{took:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_that_wait_for_memory_are_counted_and_said_while_small_ones_pass() {
    let limits = Limits {
        max_body: 1 << 20,
        max_body_in_flight: 1 << 20,
        body_timeout: Duration::from_secs(4),
        ..Limits::default()
    };
    let s = Arc::new(start_with(admission::Config::default(), limits, Some(&STATE)).await);
    // Two uploads that send 900 KiB of 1 MiB: the first holds most of the large pool, the
    // second waits for it.
    let mut hogs = Vec::new();
    for _ in 0..2 {
        let s = Arc::clone(&s);
        hogs.push(tokio::spawn(async move {
            slow_upload(&s, 1 << 20, 900 << 10).await
        }));
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    // Reviews of ordinary size come from a pool of their own.
    answered_within(&s, Duration::from_secs(1)).await;
    let (status, ready) = send(s.as_ref(), "GET", "/readyz", Vec::new()).await;
    let ready = String::from_utf8_lossy(&ready).into_owned();
    assert_eq!(status, StatusCode::OK, "{ready}");
    assert!(
        ready.contains("request bodies waited for memory 1 times in the last minute"),
        "{ready}"
    );
    let metrics = harness::metrics(s.as_ref()).await;
    assert!(
        metrics.contains("cip_webhook_admission_body_waits_total 1\n"),
        "{metrics}"
    );
    let held: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("cip_webhook_admission_body_bytes "))
        .and_then(|v| v.parse().ok())
        .expect("the body bytes gauge");
    assert!(held >= 900 << 10, "{held}");
    for hog in hogs {
        let answer = hog.await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_connections_are_never_shed_to_make_room() {
    let limits = Limits {
        max_connections: 8,
        request_timeout: Duration::from_secs(30),
        idle_timeout: Duration::from_secs(30),
        ..Limits::default()
    };
    let s = Arc::new(start_with(admission::Config::default(), limits, Some(&STATE)).await);
    // Four keep-alive connections idle after a request: the ones to close when full.
    let mut kept = Vec::new();
    for _ in 0..4 {
        let mut tls = connect(s.addr, &s.ca, &[b"http/1.1"]).await.unwrap();
        tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 512];
        let _ = tls.read(&mut buf).await.unwrap();
        kept.push(tls);
    }
    // 12 clients, 10 reviews each, every one on a new connection, with 8 slots.
    let mut clients = Vec::new();
    for _ in 0..12 {
        let s = Arc::clone(&s);
        clients.push(tokio::spawn(async move {
            let mut failed = Vec::new();
            for _ in 0..10 {
                if let Err(e) = send_checked(s.as_ref(), "POST", "/validate", good_review()).await {
                    failed.push(e);
                }
            }
            failed
        }));
    }
    let mut failed = Vec::new();
    for c in clients {
        failed.extend(c.await.unwrap());
    }
    assert!(
        failed.is_empty(),
        "{} of 120 reviews failed: {failed:?}",
        failed.len()
    );
    let metrics = harness::metrics(s.as_ref()).await;
    assert!(
        metrics.contains("cip_webhook_connections_shed_total{port=\"admission\"}"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keep_alive_connection_lives_its_idle_timeout_not_the_request_timeout() {
    let limits = Limits {
        request_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(5),
        ..Limits::default()
    };
    let s = start_with(admission::Config::default(), limits, Some(&STATE)).await;
    let mut tls = connect(s.addr, &s.ca, &[b"http/1.1"]).await.unwrap();
    for _ in 0..2 {
        tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 512];
        let n = tls.read(&mut buf).await.unwrap();
        assert!(
            buf[..n].starts_with(b"HTTP/1.1 200"),
            "{:?}",
            String::from_utf8_lossy(&buf[..n])
        );
        // Past the request timeout, within the idle timeout.
        tokio::time::sleep(Duration::from_millis(2500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_breaks_off_is_a_bad_request_not_too_large() {
    let s = start_with(
        admission::Config::default(),
        Limits::default(),
        Some(&STATE),
    )
    .await;
    let mut tls = connect(s.addr, &s.ca, &[b"http/1.1"]).await.unwrap();
    tls.write_all(
        b"POST /validate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\nzz\r\n",
    )
    .await
    .unwrap();
    let mut answer = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_string(&mut answer)).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("request body not read"), "{answer}");
}

#[tokio::test]
async fn an_operation_the_webhook_is_not_registered_for_is_refused() {
    let r = routed();
    for operation in ["CONNECT", "", "create", "PATCH"] {
        let body = review(
            "ClusterImagePolicy",
            operation,
            "u",
            policy("v1", &["blocked.example.com"]),
        );
        let (status, bytes) = send(&r, "POST", "/validate", body).await;
        assert_eq!(status, StatusCode::OK);
        let out: Value = serde_json::from_slice(&bytes).unwrap();
        let response = &out["response"];
        assert_eq!(response["allowed"], false, "{operation}: {response}");
        assert_eq!(response["status"]["code"], 400, "{operation}: {response}");
        assert!(
            response["status"]["message"]
                .as_str()
                .unwrap()
                .contains("does not handle operation"),
            "{response}"
        );
    }
}

/// A GET on a fresh plain connection, within the kubelet's probe timeout.
async fn probe(addr: std::net::SocketAddr) -> bool {
    let attempt = async {
        let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .ok()?;
        tokio::spawn(conn);
        let request = hyper::Request::get("/healthz")
            .header("host", "x")
            .body(http_body_util::Empty::<Bytes>::new())
            .ok()?;
        let response = sender.send_request(request).await.ok()?;
        let ok = response.status() == StatusCode::OK;
        response.into_body().collect().await.ok()?;
        Some(ok)
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), attempt).await,
        Ok(Some(true))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_header_clients_cannot_fail_the_metrics_ports_probes() {
    let app = Arc::new(App::without_admission());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(server::serve_ops(
        listener,
        Arc::clone(&app),
        std::future::pending(),
    ));
    // 100 clients that send half a request head and a byte now and then, reconnecting
    // when closed: more than the port's slots, all the time.
    let attack = tokio::spawn(async move {
        let mut held: Vec<Option<tokio::net::TcpStream>> = (0..100).map(|_| None).collect();
        loop {
            for slot in held.iter_mut() {
                let alive = match slot.as_mut() {
                    Some(tcp) => tcp.write_all(b"X").await.is_ok(),
                    None => false,
                };
                if !alive {
                    if let Ok(mut tcp) = tokio::net::TcpStream::connect(addr).await {
                        let _ = tcp
                            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                            .await;
                        *slot = Some(tcp);
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut ok = 0;
    for _ in 0..30 {
        if probe(addr).await {
            ok += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    attack.abort();
    eprintln!("metrics-port probes answered within 1 s past 100 slow-header clients: {ok}/30");
    assert_eq!(ok, 30);
    let metrics = app.metrics.encode();
    assert!(
        metrics.contains("cip_webhook_connections_shed_total{port=\"metrics\"}"),
        "{metrics}"
    );
}
