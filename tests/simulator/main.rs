//! The simulator tier: what a real API server cannot do on demand (409s and 500s
//! injected into chosen requests, watches cut and history compacted, slow answers), with
//! the real `cip-webhook` processes against the API simulator, and a stand-in
//! machine-config-operator beside them.

mod fidelity;
mod mco;
mod reconcile;
