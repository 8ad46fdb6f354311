//! Connections of both ports (admission over TLS, metrics over plain HTTP): a fixed number
//! of slots, a deadline for every state a connection can be in, and, when every slot is
//! taken, the connection idle the longest closed to make room — never one accepted a
//! moment ago, which has not had the time to send its request.
//!
//! Deadlines: the TLS handshake; the first request (its headers complete) within
//! `first_request`; later requests within `idle_timeout` of the previous response (hyper's
//! header timer runs while a keep-alive connection waits, so it is set to the idle
//! timeout, and the first request's shorter deadline is kept here); a graceful close
//! within a second (`request_timeout` when the server stops).

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::response::Response;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, Semaphore};
use tokio_rustls::TlsAcceptor;

use crate::metrics::Metrics;
use crate::webhook::bodies::Peer;

/// The deadlines and the slots of one port.
#[derive(Debug, Clone)]
pub struct ConnLimits {
    pub max_connections: usize,
    pub handshake_timeout: Duration,
    /// A new connection's first request must be in (headers complete) by then.
    pub first_request: Duration,
    /// A connection with no request in flight is closed this long after its last response.
    pub idle_timeout: Duration,
    /// Requests in flight get this long once the server stops.
    pub request_timeout: Duration,
    /// How long the server waits for connections to end once it stops.
    pub shutdown_grace: Duration,
    /// `admission` or `metrics`, for the log and `cip_webhook_connections_shed_total`.
    pub port: &'static str,
}

/// How a port's connections begin: a TLS handshake (HTTP/2 or HTTP/1.1 by ALPN) or plain
/// HTTP/1.1.
pub enum Transport {
    Tls(TlsAcceptor),
    Plain,
}

/// What the slot registry and a connection's watchdog know of it.
struct Conn {
    accepted: Instant,
    in_flight: AtomicUsize,
    requests: AtomicU64,
    /// Milliseconds after `accepted` of its last response.
    last: AtomicU64,
    /// Chosen to make room; told through `shed`.
    shedding: AtomicBool,
    shed: Notify,
}

impl Conn {
    fn new() -> Conn {
        Conn {
            accepted: Instant::now(),
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            last: AtomicU64::new(0),
            shedding: AtomicBool::new(false),
            shed: Notify::new(),
        }
    }

    fn idle(&self) -> bool {
        self.in_flight.load(Ordering::SeqCst) == 0
    }

    fn never_asked(&self) -> bool {
        self.requests.load(Ordering::SeqCst) == 0
    }

    /// Since when nothing happened on it: its last response, or its accept.
    fn quiet_since(&self) -> Instant {
        self.accepted + Duration::from_millis(self.last.load(Ordering::SeqCst))
    }
}

/// How long a new connection is spared by the shedding while it has not asked yet.
const FRESH: Duration = Duration::from_millis(500);

/// The open connections of a port, to choose whom to close when every slot is taken.
#[derive(Default)]
struct Registry {
    open: Mutex<HashMap<u64, Arc<Conn>>>,
    next: AtomicU64,
}

impl Registry {
    fn add(&self, conn: Arc<Conn>) -> u64 {
        let id = self.next.fetch_add(1, Ordering::SeqCst);
        self.lock().insert(id, conn);
        id
    }

    fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }

    fn len(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Conn>>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Asks the connection idle the longest to close; false when none may be. One that has
    /// not sent its first request is spared for its first [`FRESH`]: a client sends its
    /// request right after the handshake, and closing it then fails a review for nothing.
    fn shed_oldest_idle(&self) -> bool {
        let open = self.lock();
        let victim = open
            .values()
            .filter(|c| c.idle() && !c.shedding.load(Ordering::SeqCst))
            .filter(|c| !c.never_asked() || c.accepted.elapsed() >= FRESH)
            .min_by_key(|c| c.quiet_since());
        match victim {
            Some(conn) => {
                conn.shedding.store(true, Ordering::SeqCst);
                conn.shed.notify_one();
                true
            }
            None => false,
        }
    }
}

/// Counts a connection's requests in flight for its watchdog, and gives each request its
/// peer's address (the body budget's per-peer share).
#[derive(Clone)]
struct Tracked<S> {
    inner: S,
    conn: Arc<Conn>,
    peer: IpAddr,
}

impl<S, B> tower::Service<axum::http::Request<B>> for Tracked<S>
where
    S: tower::Service<axum::http::Request<B>, Response = Response> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future =
        std::pin::Pin<Box<dyn Future<Output = Result<Response, S::Error>> + Send + 'static>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: axum::http::Request<B>) -> Self::Future {
        let conn = Arc::clone(&self.conn);
        conn.in_flight.fetch_add(1, Ordering::SeqCst);
        conn.requests.fetch_add(1, Ordering::SeqCst);
        req.extensions_mut().insert(Peer(self.peer));
        let future = self.inner.call(req);
        Box::pin(async move {
            let result = future.await;
            conn.last
                .store(conn.accepted.elapsed().as_millis() as u64, Ordering::SeqCst);
            conn.in_flight.fetch_sub(1, Ordering::SeqCst);
            result
        })
    }
}

/// The HTTP/1.1 and HTTP/2 connection builders of a port.
#[derive(Clone)]
struct Protocols {
    h1: auto::Builder<TokioExecutor>,
    h2: auto::Builder<TokioExecutor>,
}

impl Protocols {
    fn new(limits: &ConnLimits) -> Protocols {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.idle_timeout);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(64)
            .keep_alive_interval(limits.idle_timeout / 2)
            .keep_alive_timeout(limits.request_timeout);
        Protocols {
            h1: builder.clone().http1_only(),
            h2: builder.http2_only(),
        }
    }
}

/// Serves `router` on `listener` until `shutdown` completes, then stops accepting, lets
/// requests in flight finish within the grace period, and returns.
pub async fn serve_connections(
    listener: TcpListener,
    router: Router,
    transport: Transport,
    limits: ConnLimits,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) {
    let transport = Arc::new(transport);
    let protocols = Protocols::new(&limits);
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let registry = Arc::new(Registry::default());
    let (stopping, stop_rx) = watch::channel(false);
    let mut shutdown = pin!(shutdown);
    loop {
        let permit = loop {
            if let Ok(p) = Arc::clone(&slots).try_acquire_owned() {
                break Some(p);
            }
            if registry.shed_oldest_idle() {
                metrics.connection_shed(limits.port);
            }
            tokio::select! {
                p = Arc::clone(&slots).acquire_owned() => break Some(p.expect("the semaphore is never closed")),
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
                () = &mut shutdown => break None,
            }
        };
        let Some(permit) = permit else { break };
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(port = limits.port, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        let conn = Arc::new(Conn::new());
        let id = registry.add(Arc::clone(&conn));
        let task = Connection {
            conn,
            peer,
            router: router.clone(),
            limits: limits.clone(),
            protocols: protocols.clone(),
            stop: stop_rx.clone(),
        };
        let (registry, transport) = (Arc::clone(&registry), Arc::clone(&transport));
        tokio::spawn(async move {
            let _permit = permit;
            task.run(tcp, &transport).await;
            registry.remove(id);
        });
    }
    drop(listener);
    tracing::info!(
        port = limits.port,
        "shutting down: no new connections, finishing requests in flight"
    );
    let _ = stopping.send(true);
    let deadline = Instant::now() + limits.shutdown_grace;
    while registry.len() > 0 {
        if Instant::now() >= deadline {
            tracing::warn!(
                port = limits.port,
                "grace period over with connections still open"
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tracing::info!(port = limits.port, "all connections closed");
}

/// One accepted connection and what it needs.
struct Connection {
    conn: Arc<Conn>,
    peer: SocketAddr,
    router: Router,
    limits: ConnLimits,
    protocols: Protocols,
    stop: watch::Receiver<bool>,
}

impl Connection {
    async fn run(self, tcp: TcpStream, transport: &Transport) {
        let peer = self.peer;
        match transport {
            Transport::Plain => {
                let builder = self.protocols.h1.clone();
                self.drive(TokioIo::new(tcp), &builder).await;
            }
            Transport::Tls(acceptor) => {
                let handshake = acceptor.accept(tcp);
                let tls = tokio::select! {
                    done = tokio::time::timeout(self.limits.handshake_timeout, handshake) => match done {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
                    },
                    // Shed or stopped while still shaking hands.
                    () = self.conn.shed.notified() => return,
                };
                let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                let builder = if h2 {
                    &self.protocols.h2
                } else {
                    &self.protocols.h1
                }
                .clone();
                self.drive(TokioIo::new(tls), &builder).await;
            }
        }
    }

    /// Serves the connection under its watchdog: the first-request and idle deadlines,
    /// shedding, and the server's stop.
    async fn drive<I>(mut self, io: TokioIo<I>, builder: &auto::Builder<TokioExecutor>)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (peer, conn) = (self.peer, Arc::clone(&self.conn));
        let service = hyper_util::service::TowerToHyperService::new(Tracked {
            inner: self.router.clone(),
            conn: Arc::clone(&conn),
            peer: peer.ip(),
        });
        let mut connection = pin!(builder.serve_connection(io, service));
        // Since when, and for how long, a graceful close may take.
        let mut closing: Option<(Instant, Duration)> = None;
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                    return;
                }
                _ = tick.tick() => {
                    if let Some((since, allowed)) = closing {
                        // A graceful close that does not complete (a client that never
                        // reads) is cut.
                        if since.elapsed() > allowed {
                            return;
                        }
                        continue;
                    }
                    let limit = if conn.never_asked() {
                        self.limits.first_request
                    } else {
                        self.limits.idle_timeout
                    };
                    if conn.idle() && conn.quiet_since().elapsed() > limit {
                        tracing::debug!(%peer, port = self.limits.port, "closing an idle connection");
                        if conn.never_asked() {
                            return;
                        }
                        connection.as_mut().graceful_shutdown();
                        closing = Some((Instant::now(), Duration::from_secs(1)));
                    }
                }
                () = conn.shed.notified(), if closing.is_none() => {
                    if !conn.idle() {
                        // Busy again since it was chosen: another is chosen next time.
                        conn.shedding.store(false, Ordering::SeqCst);
                        continue;
                    }
                    tracing::debug!(%peer, port = self.limits.port, "closing an idle connection to make room");
                    if conn.never_asked() {
                        return;
                    }
                    connection.as_mut().graceful_shutdown();
                    closing = Some((Instant::now(), Duration::from_secs(1)));
                }
                _ = self.stop.wait_for(|s| *s), if closing.is_none() => {
                    if conn.never_asked() && conn.idle() {
                        return;
                    }
                    connection.as_mut().graceful_shutdown();
                    closing = Some((Instant::now(), self.limits.request_timeout));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepted_ago(ago: Duration, asked: bool) -> Arc<Conn> {
        let conn = Conn::new();
        let conn = Conn {
            accepted: Instant::now().checked_sub(ago).unwrap(),
            ..conn
        };
        if asked {
            conn.requests.store(1, Ordering::SeqCst);
            conn.last.store(ago.as_millis() as u64, Ordering::SeqCst);
        }
        Arc::new(conn)
    }

    #[test]
    fn the_connection_quiet_the_longest_is_shed_never_a_busy_or_fresh_one() {
        let registry = Registry::default();
        let silent = accepted_ago(Duration::from_secs(3), false);
        let kept_alive = accepted_ago(Duration::from_secs(10), true);
        let busy = accepted_ago(Duration::from_secs(20), true);
        busy.in_flight.store(1, Ordering::SeqCst);
        let fresh = accepted_ago(Duration::ZERO, false);
        for c in [&fresh, &busy, &kept_alive, &silent] {
            registry.add(Arc::clone(c));
        }
        // The one that said nothing for 3 s, then the keep-alive one quiet since its last
        // response (10 s ago, just now), then nobody: not the busy one, not the fresh one.
        assert!(registry.shed_oldest_idle());
        assert!(silent.shedding.load(Ordering::SeqCst));
        assert!(registry.shed_oldest_idle());
        assert!(kept_alive.shedding.load(Ordering::SeqCst));
        assert!(!registry.shed_oldest_idle());
        assert!(!busy.shedding.load(Ordering::SeqCst));
        assert!(!fresh.shedding.load(Ordering::SeqCst));
    }
}
