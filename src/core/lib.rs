//! The pure core: parsing, validation and rendering as plain functions over plain data.
//! Nothing here does I/O, spawns a task or reads a clock; every function gives the same
//! output for the same input, whatever the order of the objects. A crate of its own, with
//! data crates as its only dependencies, so that the compiler keeps it so; `cip-webhook`
//! re-exports it as `cip_webhook::core`.

pub mod cluster;
pub mod documents;
pub mod explain;
pub mod gojson;
pub mod ignition;
pub mod inputs;
pub mod keys;
pub mod mco;
pub mod model;
pub mod names;
pub mod policy;
pub mod policy_json;
pub mod registries_conf;
pub mod registries_d;
pub mod render;
pub mod rules;
pub mod running;
pub mod scope;
pub mod snapshot;
pub mod text;
pub mod validate;
pub mod yaml;
