//! The cluster side. One way through: watch events are decoded once into the `store`;
//! each settled change is rendered once into the desired state (`desired`), which
//! admission reads and the `reconcile` writer, gated by the `lease`, turns into writes of
//! what differs. `feed` keeps admission's snapshot current; `access` asks the API server who may
//! scrape `/metrics`.

pub mod access;
pub mod desired;
pub mod feed;
pub mod impact;
pub mod lease;
pub mod pods;
pub mod reconcile;
pub mod store;
