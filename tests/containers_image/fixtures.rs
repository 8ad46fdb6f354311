//! containers/image's own signature fixtures (`signature/fixtures` of the pinned
//! go.podman.io/image/v5, read from the module cache) judged by the containers/image
//! program: the oracle agrees with the verdicts containers/image's tests expect. (Fixtures
//! that are symlinks in the upstream repository are not in the module's zip: Go module
//! zips leave symlinks out.)

use std::path::Path;

use serde_json::json;
use testkit::registry::{decide, Decision};
use testkit::upstream::signature_fixtures;

/// A policy for the `dir` transport: one sigstoreSigned requirement with this key and
/// identity rule.
fn judge(image: &Path, key: &str, identity: serde_json::Value) -> Decision {
    let work = tempfile::tempdir().unwrap();
    let policy = json!({
        "default": [{"type": "reject"}],
        "transports": {"dir": {"": [{
            "type": "sigstoreSigned",
            "keyPath": signature_fixtures().join(key),
            "signedIdentity": identity
        }]}}
    });
    let path = work.path().join("policy.json");
    std::fs::write(&path, policy.to_string()).unwrap();
    let registries_d = work.path().join("registries.d");
    std::fs::create_dir(&registries_d).unwrap();
    decide(
        &path,
        &registries_d,
        None,
        &format!("dir:{}", image.display()),
    )
}

#[test]
fn containers_image_fixtures_get_their_verdicts() {
    let fixtures = signature_fixtures();
    let valid = fixtures.join("dir-img-cosign-valid");
    let repository = json!({"type": "exactRepository", "dockerRepository": "192.168.64.2:5000/cosign-signed-single-sample"});

    let d = judge(&valid, "cosign.pub", repository.clone());
    assert!(d.accepted(), "{d:?}");
    let d = judge(&valid, "cosign2.pub", repository.clone());
    assert!(
        d.rejected_with("cryptographic signature verification failed"),
        "another key: {d:?}"
    );
    let d = judge(
        &valid,
        "cosign.pub",
        json!({"type": "exactRepository", "dockerRepository": "192.168.64.2:5000/other"}),
    );
    assert!(
        d.rejected_with("is not accepted"),
        "another repository: {d:?}"
    );

    let tagged = fixtures.join("dir-img-cosign-valid-with-tag");
    let exact = |r: &str| json!({"type": "exactReference", "dockerReference": r});
    let d = judge(
        &tagged,
        "cosign.pub",
        exact("192.168.64.2:5000/skopeo-signed:tag"),
    );
    assert!(d.accepted(), "{d:?}");
    let d = judge(
        &tagged,
        "cosign.pub",
        exact("192.168.64.2:5000/skopeo-signed:other"),
    );
    assert!(d.rejected_with("is not accepted"), "{d:?}");

    // The manifest changed after signing (one more space): its digest no longer matches.
    let work = tempfile::tempdir().unwrap();
    let modified = work.path().join("modified");
    std::fs::create_dir(&modified).unwrap();
    let manifest = std::fs::read_to_string(valid.join("manifest.json")).unwrap();
    std::fs::write(modified.join("manifest.json"), format!("{manifest} ")).unwrap();
    std::fs::copy(valid.join("signature-1"), modified.join("signature-1")).unwrap();
    let d = judge(&modified, "cosign.pub", repository);
    assert!(
        d.rejected_with("does not match"),
        "modified manifest: {d:?}"
    );
}
