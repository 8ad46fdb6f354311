//! Pulls judged before they happen: the registry client ([`registry`]), one image decided
//! as CRI-O on a pool would ([`verify`]), and every running image under the policies in
//! force and proposed ([`preview`]). The judging itself is `cip_sigstore`'s, pure.

pub mod preview;
pub mod registry;
pub mod verify;
