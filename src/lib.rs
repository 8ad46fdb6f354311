//! cip-webhook's pure core: ClusterImagePolicy parsing, validation and rendering,
//! shared by the admission webhook, the reconciler and the offline CLI. No I/O here.

pub mod cluster;
pub mod documents;
pub mod explain;
pub mod gojson;
pub mod ignition;
pub mod keys;
pub mod model;
pub mod policy;
pub mod registries_d;
pub mod render;
pub mod rules;
pub mod scope;
pub mod validate;
