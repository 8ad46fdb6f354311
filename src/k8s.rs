//! The cluster side. One way through: watch events are decoded once into the `store`;
//! each settled change is rendered once into the desired state (`desired`), which
//! admission reads and the `reconcile` writer, gated by the `lease`, turns into writes of
//! what differs.

pub mod desired;
pub mod lease;
pub mod reconcile;
pub mod store;
