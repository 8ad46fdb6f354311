//! containers/image's sigstore signature checks, ported by hand from its Go code (each
//! module cites the file it mirrors), as plain functions over bytes the caller fetched:
//! no I/O, no clock. Where the port cannot decide as containers/image does, the answer
//! is `Unknown`, never accepted or refused.

pub mod canonical;
pub mod gojson;
pub mod identity;
pub mod judge;
pub mod keys;
pub mod payload;
pub mod pem;
pub mod rekor;
pub mod signers;
pub mod trust;
pub mod versions;
pub mod x509;
