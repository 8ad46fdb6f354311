//! cip-webhook, in three layers; the directory of a file names its layer.
//!
//! - [`core`] (`src/core/`, the `cip-core` crate): pure functions over plain data, no
//!   I/O, no async: the ClusterImagePolicy and ImagePolicy model, validation (the CRDs'
//!   rules and the cluster's constraints), rendering into MachineConfigs (policy.json,
//!   sigstore-registries.yaml, namespace policy files), `explain`, reading manifests from
//!   text. The CLI, the webhook and the reconciler share it.
//! - [`webhook`] (`src/webhook/`): admission reviews answered from a snapshot
//!   (`admission`), the HTTPS server with its limits (`server`) and certificate reload (`tls`).
//! - [`k8s`] (`src/k8s/`): the cluster side: the watch store that decodes each object once
//!   (`store`), the one render per settled change (`desired`), the Lease (`lease`) and the
//!   lease-gated writer of the plan's differences (`reconcile`).
//! - [`pull`] (`src/pull/`): pulls judged before they happen: a registry client, `verify`
//!   and `preview`, over the pure `cip_sigstore` crate (`src/sigstore/`), which ports
//!   containers/image's signature checks.
//! - Edges shared by all: [`runtime`] wires `serve` and `reconcile` together and owns the
//!   process's [`state`], [`files`] reads manifest directories (and [`statedir`] keeps the
//!   state from one current), [`metrics`] is the Prometheus registry.
//!
//! Imports name their layer: `cip_core::render`, `crate::webhook::admission`,
//! `crate::k8s::reconcile` (`tests/architecture.rs` holds the direction).

/// The pure core, its own crate (`src/core/Cargo.toml`) so that no I/O crate can reach it.
pub use cip_core as core;
pub mod files;
pub mod impact;
pub mod k8s;
pub mod metrics;
pub mod pull;
pub mod runtime;
pub mod state;
pub mod statedir;
pub mod webhook;

/// The wall clock in Unix seconds, read at the edges: the core is given the time.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
