//! Pulls judged before they happen: the registry client ([`registry`]), one image decided
//! as CRI-O on a pool would ([`verify`]), and every running image under the policies in
//! force and proposed ([`preview`]). The judging itself is `cip_sigstore`'s, pure.

pub mod cache;
pub mod impact;
pub mod preview;
pub mod proxy;
pub mod registry;
pub mod trust;
pub mod verify;

/// A mutex's guard, also after a panic elsewhere poisoned it: the data are caches and
/// counters, valid at every step.
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
