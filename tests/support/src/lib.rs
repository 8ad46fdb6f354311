//! What cip-webhook's integration tests share, one module per harness:
//!
//! - [`upstream`]: the pinned upstream parts (CRDs and fixtures in the Go module cache,
//!   kube-apiserver, etcd, kubectl and the containers/image program built from
//!   `tests/upstream/`) that `scripts/upstream.sh` fetches and builds;
//! - [`keyless`]: CA chains, Fulcio-like and PKI leaves, and a test Rekor key for SETs;
//! - [`kube`]: a real kube-apiserver with etcd on loopback;
//! - [`manifests`]: the deployment manifests as kustomize renders them;
//! - [`cases`]: generated policy fields at the edges of the CRDs' rules;
//! - [`clients`]: kube-rs clients of either server, for tests of the servers themselves;
//! - [`cluster`]: either API server (the real one, or the simulator for faults on demand)
//!   with the real `cip-webhook` processes and kubectl;
//! - [`mco`]: a stand-in machine-config-operator on the simulator;
//! - [`registry`]: a loopback registry and containers/image deciding pulls from it;
//! - [`server`]: the admission server in the test process, over real TLS sockets;
//! - [`paths`]: the repository, the binary under test, fixtures and goldens.

pub mod cases;
pub mod clients;
pub mod cluster;
pub mod fakeregistry;
pub mod keyless;
pub mod kube;
pub mod manifests;
pub mod mco;
pub mod paths;
pub mod registry;
pub mod server;
pub mod signing;
pub mod upstream;
