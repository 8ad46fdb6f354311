//! The offline tier: everything that needs no server and no network, from the pure core
//! to the command line. Upstream data (the CRDs whose CEL rules the core must agree with)
//! is read from the Go module cache, as `scripts/upstream.sh` pinned it.

mod cel;
mod cli;
mod golden;
mod image_policies;
mod layout;
mod manifests;
mod properties;
mod validation;
mod verify_registry;
