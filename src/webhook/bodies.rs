//! Request bodies in memory: reserved as they arrive, never for what a client declares,
//! so a client that announces 3 MiB and sends a byte a second holds a byte, not the
//! budget. The first 64 KiB of every body come from a pool of their own, so reviews of
//! ordinary size (a few KiB) never queue behind large or slow ones; past that, bodies
//! share the large pool. One peer address holds at most its own share, and a body must
//! arrive within its deadline (the API server sends a review at once).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use futures_util::StreamExt;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::metrics::Metrics;

/// Each body's first KiB drawn from the small pool.
pub const SMALL_KIB: usize = 64;

/// Why a body was not read.
#[derive(Debug, PartialEq)]
pub enum BodyError {
    /// Over `max` bytes.
    TooLarge,
    /// Not all there before the deadline (a slow upload), or no memory for it by then.
    TimedOut,
    /// Its peer held its share of the budget until the deadline.
    PeerOver,
    /// The connection failed while reading it.
    Read(String),
}

/// The peer address of a request, put in its extensions by the server.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub IpAddr);

pub struct BodyBudget {
    small: Arc<Semaphore>,
    large: Arc<Semaphore>,
    per_peer_kib: usize,
    held: Mutex<HashMap<IpAddr, usize>>,
    held_kib: AtomicU64,
    /// Times a body waited for memory, and when the latest did.
    waits: AtomicU64,
    recent: Mutex<Vec<Instant>>,
    metrics: Option<Arc<Metrics>>,
    /// Woken when a reservation of a peer is given back.
    released: Notify,
}

/// A body's reservation: returned to its pools and its peer's share when dropped, which
/// is when its request is answered (the body is in memory until then).
pub struct Reservation {
    budget: Arc<BodyBudget>,
    peer: Option<IpAddr>,
    kib: usize,
    permits: Vec<OwnedSemaphorePermit>,
}

impl Reservation {
    fn new(budget: Arc<BodyBudget>, peer: Option<IpAddr>) -> Reservation {
        Reservation {
            budget,
            peer,
            kib: 0,
            permits: Vec::new(),
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.permits.clear();
        self.budget
            .held_kib
            .fetch_sub(self.kib as u64, Ordering::SeqCst);
        if let Some(peer) = self.peer {
            let mut held = self.budget.held.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = held.get_mut(&peer) {
                *n = n.saturating_sub(self.kib);
                if *n == 0 {
                    held.remove(&peer);
                }
            }
            drop(held);
            self.budget.released.notify_waiters();
        }
    }
}

fn kib(bytes: usize) -> usize {
    bytes.div_ceil(1024)
}

fn permits(n: usize) -> u32 {
    n.clamp(1, Semaphore::MAX_PERMITS) as u32
}

impl BodyBudget {
    /// `large_bytes` for the bodies past their first 64 KiB, `small_bytes` for those
    /// first KiB, at most `per_peer_bytes` for one peer address.
    pub fn new(large_bytes: usize, small_bytes: usize, per_peer_bytes: usize) -> BodyBudget {
        BodyBudget::counted(large_bytes, small_bytes, per_peer_bytes, None)
    }

    /// [`BodyBudget::new`], counting waits in `cip_webhook_admission_body_waits_total`.
    pub fn counted(
        large_bytes: usize,
        small_bytes: usize,
        per_peer_bytes: usize,
        metrics: Option<Arc<Metrics>>,
    ) -> BodyBudget {
        BodyBudget {
            small: Arc::new(Semaphore::new(kib(small_bytes).max(SMALL_KIB))),
            large: Arc::new(Semaphore::new(kib(large_bytes).max(1))),
            per_peer_kib: kib(per_peer_bytes).max(SMALL_KIB),
            held: Mutex::new(HashMap::new()),
            held_kib: AtomicU64::new(0),
            waits: AtomicU64::new(0),
            recent: Mutex::new(Vec::new()),
            metrics,
            released: Notify::new(),
        }
    }

    /// Bytes of bodies in memory now.
    pub fn held_bytes(&self) -> u64 {
        self.held_kib.load(Ordering::SeqCst) * 1024
    }

    /// Times a body waited for memory since the start.
    pub fn waits(&self) -> u64 {
        self.waits.load(Ordering::SeqCst)
    }

    /// Times a body waited for memory within `window` before now.
    pub fn recent_waits(&self, window: Duration) -> usize {
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent.retain(|t| t.elapsed() < window);
        recent.len()
    }

    fn waited(&self) {
        self.waits.fetch_add(1, Ordering::SeqCst);
        if let Some(metrics) = &self.metrics {
            metrics.body_waited();
        }
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent.retain(|t| t.elapsed() < Duration::from_secs(60));
        // A warning at the first wait of a quiet minute; the metric counts them all.
        if recent.is_empty() {
            tracing::warn!(
                held_bytes = self.held_bytes(),
                "request bodies are waiting for memory (slow or large uploads hold the body budget); reviews may be late"
            );
        }
        recent.push(Instant::now());
    }

    /// `n` more KiB of `peer`'s share, waiting until `deadline` for its own earlier bodies
    /// to be answered: the API server's bursts pass, a peer's slow uploads only hold
    /// up that peer's bodies.
    async fn peer_share(&self, peer: IpAddr, n: usize, deadline: Instant) -> Result<(), BodyError> {
        let mut counted = false;
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            {
                let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
                let mine = held.entry(peer).or_insert(0);
                if *mine + n <= self.per_peer_kib {
                    *mine += n;
                    return Ok(());
                }
            }
            if !counted {
                self.waited();
                counted = true;
            }
            if tokio::time::timeout_at(deadline.into(), released)
                .await
                .is_err()
            {
                return Err(BodyError::PeerOver);
            }
        }
    }

    /// `n` more KiB for a body that holds `held` already, from the small pool while the
    /// body is within its first 64 KiB, else the large one; waiting until `deadline`.
    async fn grow(
        &self,
        r: &mut Reservation,
        n: usize,
        deadline: Instant,
    ) -> Result<(), BodyError> {
        if n == 0 {
            return Ok(());
        }
        if let Some(peer) = r.peer {
            self.peer_share(peer, n, deadline).await?;
        }
        // Counted before the wait: the Drop of the reservation gives it back either way.
        r.kib += n;
        self.held_kib.fetch_add(n as u64, Ordering::SeqCst);
        let small = SMALL_KIB.saturating_sub(r.kib - n).min(n);
        for (pool, count) in [(&self.small, small), (&self.large, n - small)] {
            if count == 0 {
                continue;
            }
            let permit = match Arc::clone(pool).try_acquire_many_owned(permits(count)) {
                Ok(p) => p,
                Err(_) => {
                    self.waited();
                    let wait = Arc::clone(pool).acquire_many_owned(permits(count));
                    match tokio::time::timeout_at(deadline.into(), wait).await {
                        Ok(Ok(p)) => p,
                        _ => return Err(BodyError::TimedOut),
                    }
                }
            };
            r.permits.push(permit);
        }
        Ok(())
    }

    /// The body, up to `max` bytes, complete by `deadline`, with memory reserved as its
    /// bytes arrive. Past `max` it is an error after reading on (holding nothing) up to
    /// `drain` bytes in all: over HTTP/2 a response sent while the client still sends
    /// ends the stream with a reset, and clients then report a stream error, not the 413.
    pub async fn read(
        self: &Arc<Self>,
        body: Body,
        peer: Option<IpAddr>,
        max: usize,
        drain: usize,
        deadline: Instant,
    ) -> Result<(Bytes, Reservation), BodyError> {
        let mut reservation = Reservation::new(Arc::clone(self), peer);
        let mut stream = body.into_data_stream();
        let mut kept = Vec::new();
        let mut seen = 0usize;
        loop {
            let next = match tokio::time::timeout_at(deadline.into(), stream.next()).await {
                Ok(next) => next,
                Err(_) => return Err(BodyError::TimedOut),
            };
            let Some(chunk) = next else { break };
            let chunk = chunk.map_err(|e| BodyError::Read(e.to_string()))?;
            seen += chunk.len();
            if seen <= max {
                let n = kib(seen).saturating_sub(reservation.kib);
                self.grow(&mut reservation, n, deadline).await?;
                kept.extend_from_slice(&chunk);
            } else if seen > drain {
                break;
            } else {
                kept = Vec::new();
                reservation.permits.clear();
            }
        }
        if seen > max {
            return Err(BodyError::TooLarge);
        }
        Ok((kept.into(), reservation))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(2)
    }

    #[tokio::test]
    async fn small_bodies_do_not_wait_for_a_full_large_pool() {
        let budget = Arc::new(BodyBudget::new(1024 * 1024, 1024 * 1024, 64 * 1024 * 1024));
        // Large bodies hold the whole large pool.
        let mut holders = Vec::new();
        for _ in 0..2 {
            let mut r = Reservation::new(Arc::clone(&budget), None);
            budget.grow(&mut r, SMALL_KIB + 512, soon()).await.unwrap();
            holders.push(r);
        }
        let small = budget
            .read(Body::from(vec![b'x'; 4000]), None, 3 << 20, 0, soon())
            .await;
        let (bytes, held) = small.unwrap();
        assert_eq!(bytes.len(), 4000);
        assert_eq!(
            budget.held_bytes(),
            (2 * (SMALL_KIB + 512) + 4) as u64 * 1024
        );
        // Held until the request is answered.
        drop(held);
        assert_eq!(budget.waits(), 0);
        // A large one now waits, and gives up at its deadline.
        let late = Instant::now() + Duration::from_millis(100);
        let large = budget
            .read(Body::from(vec![b'x'; 200 * 1024]), None, 3 << 20, 0, late)
            .await;
        assert_eq!(large.map(|r| r.0), Err(BodyError::TimedOut));
        assert_eq!(budget.waits(), 1);
        drop(holders);
        assert_eq!(budget.held_bytes(), 0);
    }

    #[tokio::test]
    async fn one_peer_holds_its_share_and_no_more() {
        let budget = Arc::new(BodyBudget::new(64 << 20, 16 << 20, 256 * 1024));
        let peer: IpAddr = "10.0.0.7".parse().unwrap();
        let mut r = Reservation::new(Arc::clone(&budget), Some(peer));
        budget.grow(&mut r, 200, soon()).await.unwrap();
        let over = budget
            .read(
                Body::from(vec![b'x'; 100 * 1024]),
                Some(peer),
                3 << 20,
                0,
                Instant::now() + Duration::from_millis(100),
            )
            .await;
        assert_eq!(over.map(|r| r.0), Err(BodyError::PeerOver));
        let other = budget
            .read(
                Body::from(vec![b'x'; 100 * 1024]),
                Some("10.0.0.8".parse().unwrap()),
                3 << 20,
                0,
                soon(),
            )
            .await;
        assert!(other.is_ok());
        // A body of the same peer waits for the earlier one to be answered.
        let waiting = {
            let budget = Arc::clone(&budget);
            tokio::spawn(async move {
                let body = Body::from(vec![b'x'; 100 * 1024]);
                budget
                    .read(body, Some(peer), 3 << 20, 0, soon())
                    .await
                    .map(|r| r.0.len())
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished());
        drop(r);
        assert_eq!(waiting.await.unwrap(), Ok(100 * 1024));
        drop(other);
        assert!(budget.held.lock().unwrap().is_empty());
        assert_eq!(budget.held_bytes(), 0);
    }
}
