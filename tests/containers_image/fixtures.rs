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

/// A `dir:` image's sigstore signatures as the dir transport stores them
/// (`internal/signature`: `\0sigstore-json\n` and a JSON object).
fn dir_layers(image: &Path) -> Vec<cip_sigstore::judge::Layer> {
    let mut layers = Vec::new();
    for n in 1.. {
        let Ok(bytes) = std::fs::read(image.join(format!("signature-{n}"))) else {
            break;
        };
        let json = bytes
            .strip_prefix(b"\0sigstore-json\n")
            .expect("a sigstore signature");
        let v: serde_json::Value = serde_json::from_slice(json).unwrap();
        let payload = base64::Engine::decode(
            &base64::engine::general_purpose::STANDARD,
            v["payload"].as_str().unwrap(),
        )
        .unwrap();
        layers.push(cip_sigstore::judge::Layer {
            digest: format!("signature-{n}"),
            media_type: v["mimeType"].as_str().unwrap().to_string(),
            payload,
            annotations: serde_json::from_value(v["annotations"].clone()).unwrap_or_default(),
        });
    }
    layers
}

/// Our judge on containers/image's own fixtures, beside containers/image's verdict, under
/// public-key policies (also for the keyless, Rekor and PKI fixtures, whose signatures a
/// public key must then refuse): the same verdict on every case, none left unknown.
#[test]
fn our_judge_agrees_with_containers_image_on_its_fixtures() {
    let fixtures = signature_fixtures();
    let images = [
        "dir-img-cosign-valid",
        "dir-img-cosign-valid-with-tag",
        "dir-img-cosign-key-rekor-valid",
        "dir-img-cosign-fulcio-rekor-valid",
        "dir-img-cosign-pki-valid",
    ];
    let identities = [
        json!({"type": "exactRepository", "dockerRepository": "192.168.64.2:5000/cosign-signed-single-sample"}),
        json!({"type": "exactRepository", "dockerRepository": "192.168.64.2:5000/skopeo-signed"}),
        json!({"type": "exactReference", "dockerReference": "192.168.64.2:5000/skopeo-signed:tag"}),
        json!({"type": "exactRepository", "dockerRepository": "192.168.64.2:5000/other"}),
    ];
    let intended = cip_sigstore::identity::pulled_reference("fixture.invalid/dir:image").unwrap();
    let (mut decided, mut unknown) = (0, 0);
    for image in images {
        let dir = fixtures.join(image);
        let manifest = std::fs::read(dir.join("manifest.json")).unwrap();
        let layers = dir_layers(&dir);
        for key in ["cosign.pub", "cosign2.pub"] {
            for identity in &identities {
                let theirs = judge(&dir, key, identity.clone());
                let requirement: cip_core::policy::Requirement = serde_json::from_value(json!({
                    "type": "sigstoreSigned",
                    "keyData": testkit::paths::b64(std::fs::read(fixtures.join(key)).unwrap()),
                    "signedIdentity": identity
                }))
                .unwrap();
                let pull = cip_sigstore::judge::Pull {
                    intended: &intended,
                    manifest: &manifest,
                    layers: &layers,
                };
                let ours = cip_sigstore::judge::judge(
                    &[requirement],
                    &pull,
                    &mut cip_sigstore::judge::Memo::default(),
                );
                let case = format!(
                    "{image} {key} {identity}: containers/image {theirs:?}, we {:?}",
                    ours.verdict
                );
                match ours.verdict {
                    cip_sigstore::judge::Verdict::Accepted => assert!(theirs.accepted(), "{case}"),
                    cip_sigstore::judge::Verdict::Refused(_) => {
                        assert_eq!(theirs.verdict, "rejected", "{case}")
                    }
                    cip_sigstore::judge::Verdict::Unknown(_) => {
                        unknown += 1;
                        println!("{case}");
                        continue;
                    }
                }
                decided += 1;
            }
        }
    }
    println!("containers/image fixtures: {decided} decided alike, {unknown} unknown");
    assert_eq!((decided, unknown), (40, 0));
}
