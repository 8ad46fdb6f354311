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
/// public key must then refuse): the same verdict on every case, none left unknown; and
/// the same again judged from the signers a warmed memo recovered.
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
        let pull = cip_sigstore::judge::Pull {
            intended: &intended,
            manifest: &manifest,
            layers: &layers,
            now: 0,
        };
        let requirement = |key: &str, identity: &serde_json::Value| {
            let r: cip_core::policy::Requirement = serde_json::from_value(json!({
                "type": "sigstoreSigned",
                "keyData": testkit::paths::b64(std::fs::read(fixtures.join(key)).unwrap()),
                "signedIdentity": identity
            }))
            .unwrap();
            r
        };
        // A memo warmed as an admission replica warms one: each signature's signers
        // recovered, under a key that refuses them all (so every layer is met).
        let warmed = cip_sigstore::judge::Memo::default();
        let w = cip_sigstore::judge::judge(
            &[requirement("cosign2.pub", &identities[0])],
            &pull,
            &warmed.recovering(),
        );
        // The PKI fixture's signature is not ECDSA: nothing to recover, ring decides.
        let ecdsa = image != "dir-img-cosign-pki-valid";
        assert_eq!(warmed.signers_kept() > 0, ecdsa, "{image}: {w:?}");
        for key in ["cosign.pub", "cosign2.pub"] {
            for identity in &identities {
                let theirs = judge(&dir, key, identity.clone());
                let requirement = requirement(key, identity);
                let ours = cip_sigstore::judge::judge(
                    std::slice::from_ref(&requirement),
                    &pull,
                    &cip_sigstore::judge::Memo::default(),
                );
                let from_signers = cip_sigstore::judge::judge(&[requirement], &pull, &warmed);
                assert_eq!(
                    from_signers.verdict, ours.verdict,
                    "{image} {key} {identity}, from the signers"
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

/// containers/image's keyless, key-with-Rekor and PKI fixtures under the trust roots its
/// own tests use (`policy_eval_sigstore_test.go`), and under ones that must refuse them:
/// our judge and the containers/image program give each the verdict containers/image's
/// tests expect.
#[test]
fn keyless_and_pki_fixtures_get_containers_images_verdicts() {
    let fixtures = signature_fixtures();
    let data = |name: &str| testkit::paths::b64(std::fs::read(fixtures.join(name)).unwrap());
    let rekor = testkit::paths::b64(
        std::fs::read(fixtures.join("../internal/testdata/rekor.pub")).unwrap(),
    );
    let repo = |r: &str| json!({"type": "exactRepository", "dockerRepository": r});
    let fulcio = |email: &str, issuer: &str| json!({"caData": data("fulcio_v1.crt.pem"), "oidcIssuer": issuer, "subjectEmail": email});
    let github = "https://github.com/login/oauth";
    let pki = |email: Option<&str>, host: Option<&str>, intermediates: bool| {
        let mut p = json!({"caRootsData": data("pki_root_crts.pem")});
        if intermediates {
            p["caIntermediatesData"] = json!(data("pki_intermediate_crts.pem"));
        }
        if let Some(e) = email {
            p["subjectEmail"] = json!(e);
        }
        if let Some(h) = host {
            p["subjectHostname"] = json!(h);
        }
        p
    };
    let key_rekor = (
        "dir-img-cosign-key-rekor-valid",
        repo("192.168.64.2:5000/cosign-signed/key-1"),
    );
    let fulcio_rekor = (
        "dir-img-cosign-fulcio-rekor-valid",
        repo("192.168.64.2:5000/cosign-signed/fulcio-rekor-1"),
    );
    let pki_image = ("dir-img-cosign-pki-valid", repo("localhost:5000/test"));
    let cases = [
        (
            &key_rekor,
            json!({"keyData": data("cosign2.pub"), "rekorPublicKeyData": rekor}),
            true,
        ),
        (
            &key_rekor,
            json!({"keyDatas": [data("cosign.pub"), data("cosign2.pub")], "rekorPublicKeyDatas": [data("cosign.pub"), rekor]}),
            true,
        ),
        (
            &key_rekor,
            json!({"keyData": data("cosign2.pub"), "rekorPublicKeyData": data("cosign.pub")}),
            false,
        ),
        (
            &key_rekor,
            json!({"keyData": data("cosign.pub"), "rekorPublicKeyData": rekor}),
            false,
        ),
        (&key_rekor, json!({"keyData": data("cosign2.pub")}), true),
        (
            &fulcio_rekor,
            json!({"fulcio": fulcio("mitr@redhat.com", github), "rekorPublicKeyData": rekor}),
            true,
        ),
        (
            &fulcio_rekor,
            json!({"fulcio": fulcio("mitr@redhat.com", github), "rekorPublicKeyDatas": [data("cosign.pub"), rekor]}),
            true,
        ),
        (
            &fulcio_rekor,
            json!({"fulcio": fulcio("this-does-not-match@example.com", github), "rekorPublicKeyData": rekor}),
            false,
        ),
        (
            &fulcio_rekor,
            json!({"fulcio": fulcio("mitr@redhat.com", "https://example.com"), "rekorPublicKeyData": rekor}),
            false,
        ),
        (
            &fulcio_rekor,
            json!({"fulcio": fulcio("mitr@redhat.com", github), "rekorPublicKeyData": data("cosign.pub")}),
            false,
        ),
        (&fulcio_rekor, json!({"keyData": data("cosign.pub")}), false),
        (
            &pki_image,
            json!({"pki": pki(Some("qiwan@redhat.com"), Some("myhost.example.com"), true)}),
            true,
        ),
        (
            &pki_image,
            json!({"pki": pki(Some("qiwan@redhat.com"), None, false)}),
            true,
        ),
        (
            &pki_image,
            json!({"pki": pki(None, Some("myhost.example.com"), false)}),
            true,
        ),
        (
            &pki_image,
            json!({"pki": pki(Some("other@redhat.com"), None, true)}),
            false,
        ),
        (
            &pki_image,
            json!({"pki": pki(None, Some("otherhost.example.com"), true)}),
            false,
        ),
        (
            &pki_image,
            json!({"fulcio": fulcio("qiwan@redhat.com", github), "rekorPublicKeyData": rekor}),
            false,
        ),
    ];
    let intended = cip_sigstore::identity::pulled_reference("fixture.invalid/dir:image").unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    for ((image, identity), root, accepted) in &cases {
        let dir = fixtures.join(image);
        let mut requirement = root.clone();
        requirement["type"] = json!("sigstoreSigned");
        requirement["signedIdentity"] = identity.clone();
        let work = tempfile::tempdir().unwrap();
        let policy =
            json!({"default": [{"type": "reject"}], "transports": {"dir": {"": [requirement]}}});
        std::fs::write(work.path().join("policy.json"), policy.to_string()).unwrap();
        std::fs::create_dir(work.path().join("registries.d")).unwrap();
        let theirs = decide(
            &work.path().join("policy.json"),
            &work.path().join("registries.d"),
            None,
            &format!("dir:{}", dir.display()),
        );
        let manifest = std::fs::read(dir.join("manifest.json")).unwrap();
        let layers = dir_layers(&dir);
        let pull = cip_sigstore::judge::Pull {
            intended: &intended,
            manifest: &manifest,
            layers: &layers,
            now,
        };
        let ours = cip_sigstore::judge::judge(
            &[serde_json::from_value(requirement).unwrap()],
            &pull,
            &cip_sigstore::judge::Memo::default(),
        );
        let case = format!(
            "{image} {root}: containers/image {theirs:?}, we {:?}",
            ours.verdict
        );
        assert_eq!(theirs.accepted(), *accepted, "{case}");
        let expected = if *accepted {
            cip_sigstore::judge::Verdict::Accepted.word()
        } else {
            "refused"
        };
        assert_eq!(ours.verdict.word(), expected, "{case}");
    }
}

/// `TestVerifyRekorSET`'s fixtures (`signature/internal/testdata`): the SET holds for the
/// certificate, signature and payload logged, at the logged time, with the Rekor key in
/// any position; and not for another key, payload, signature or certificate.
#[test]
fn the_upstream_rekor_set_verifies_at_its_integrated_time() {
    let testdata = signature_fixtures().join("../internal/testdata");
    let read = |name: &str| std::fs::read(testdata.join(name)).unwrap();
    let rekor = cip_sigstore::keys::parse_pem(&read("rekor.pub")).unwrap();
    let other = cip_sigstore::keys::parse_pem(
        &std::fs::read(signature_fixtures().join("cosign.pub")).unwrap(),
    )
    .unwrap();
    let (set, cert, sig, payload) = (
        read("rekor-set"),
        read("rekor-cert"),
        read("rekor-sig"),
        read("rekor-payload"),
    );
    let sig = String::from_utf8(sig).unwrap();
    let der = || cip_sigstore::rekor::single_pem(&cert).map_err(cip_sigstore::keys::Check::Invalid);
    for keys in [
        vec![rekor.clone()],
        vec![rekor.clone(), other.clone()],
        vec![other.clone(), rekor.clone()],
    ] {
        assert_eq!(
            cip_sigstore::rekor::verify_set(&keys, &set, der(), &sig, &payload),
            Ok(1_670_870_899)
        );
    }
    let refused = |r: Result<i64, cip_sigstore::keys::Check>| {
        matches!(r, Err(cip_sigstore::keys::Check::Invalid(_)))
    };
    assert!(refused(cip_sigstore::rekor::verify_set(
        &[other],
        &set,
        der(),
        &sig,
        &payload
    )));
    assert!(refused(cip_sigstore::rekor::verify_set(
        std::slice::from_ref(&rekor),
        b"",
        der(),
        &sig,
        &payload
    )));
    assert!(refused(cip_sigstore::rekor::verify_set(
        std::slice::from_ref(&rekor),
        b"invalid signature",
        der(),
        &sig,
        &payload
    )));
    assert!(refused(cip_sigstore::rekor::verify_set(
        std::slice::from_ref(&rekor),
        &set,
        der(),
        &sig,
        b"another payload"
    )));
    let other_sig = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        b"not the signature",
    );
    assert!(refused(cip_sigstore::rekor::verify_set(
        std::slice::from_ref(&rekor),
        &set,
        der(),
        &other_sig,
        &payload
    )));
    let pki_cert = std::fs::read(signature_fixtures().join("pki-cert")).unwrap();
    let pki_der =
        cip_sigstore::rekor::single_pem(&pki_cert).map_err(cip_sigstore::keys::Check::Invalid);
    assert!(refused(cip_sigstore::rekor::verify_set(
        &[rekor],
        &set,
        pki_der,
        &sig,
        &payload
    )));
}

/// The sigstore trust root of a requirement written as policy.json has it.
fn trust_root(requirement: serde_json::Value) -> cip_sigstore::trust::Root {
    let mut requirement = requirement;
    requirement["type"] = json!("sigstoreSigned");
    match serde_json::from_value(requirement).unwrap() {
        cip_core::policy::Requirement::SigstoreSigned(s) => cip_sigstore::trust::root(&s).unwrap(),
        other => panic!("{other:?}"),
    }
}

/// `TestVerifyRekorFulcio` and `TestFulcioTrustRootVerifyFulcioCertificateAtTime` on
/// containers/image's files: the public-good Fulcio certificate and chain, the SET that
/// logged it, verified at the SET's time; then `TestPKIVerify`'s PKI files at the current
/// time.
#[test]
fn the_upstream_fulcio_and_pki_certificates_verify_as_in_containers_image() {
    use cip_sigstore::keys::Check;
    use cip_sigstore::trust::{candidates, CERTIFICATE_ANNOTATION, CHAIN_ANNOTATION};
    let fixtures = signature_fixtures();
    let text = |path: &str| std::fs::read_to_string(fixtures.join(path)).unwrap();
    let data = |path: &str| testkit::paths::b64(std::fs::read(fixtures.join(path)).unwrap());
    let (set, sig, payload) = (
        text("../internal/testdata/rekor-set"),
        text("../internal/testdata/rekor-sig"),
        std::fs::read(fixtures.join("../internal/testdata/rekor-payload")).unwrap(),
    );
    let fulcio = |email: &str, ca: &str| {
        trust_root(json!({
            "fulcio": {"caData": data(ca), "oidcIssuer": "https://github.com/login/oauth", "subjectEmail": email},
            "rekorPublicKeyData": data("../internal/testdata/rekor.pub")
        }))
    };
    let annotations = |cert: &str, chain: Option<&str>| {
        let mut a = std::collections::BTreeMap::from([
            (cip_sigstore::rekor::SET_ANNOTATION.to_string(), set.clone()),
            (CERTIFICATE_ANNOTATION.to_string(), cert.to_string()),
        ]);
        if let Some(chain) = chain {
            a.insert(CHAIN_ANNOTATION.to_string(), chain.to_string());
        }
        a
    };
    let (cert, chain) = (text("fulcio-cert"), text("fulcio-chain"));
    let ok = |r: Result<cip_sigstore::trust::Candidates, Check>| r.map(|c| c.keys.len()) == Ok(1);
    let refused =
        |r: Result<cip_sigstore::trust::Candidates, Check>| matches!(r, Err(Check::Invalid(_)));
    let root = fulcio("mitr@redhat.com", "fulcio_v1.crt.pem");
    assert!(ok(candidates(
        &root,
        &annotations(&cert, Some(&chain)),
        sig.trim(),
        &payload,
        0
    )));
    assert!(refused(candidates(
        &root,
        &annotations(&cert, Some(&chain)),
        sig.trim(),
        b"this payload does not match",
        0
    )));
    let other = fulcio("this-does-not-match@example.com", "fulcio_v1.crt.pem");
    assert!(refused(candidates(
        &other,
        &annotations(&cert, Some(&chain)),
        sig.trim(),
        &payload,
        0
    )));
    assert!(refused(candidates(
        &root,
        &annotations(&cert, Some("not a certificate")),
        sig.trim(),
        &payload,
        0
    )));
    assert!(refused(candidates(
        &root,
        &annotations("not a certificate", Some(&chain)),
        sig.trim(),
        &payload,
        0
    )));
    // No intermediates: fails as is, succeeds with them among the roots.
    assert!(refused(candidates(
        &root,
        &annotations(&cert, None),
        sig.trim(),
        &payload,
        0
    )));
    let with_intermediates = fulcio("mitr@redhat.com", "fulcio-chain");
    assert!(ok(candidates(
        &with_intermediates,
        &annotations(&cert, None),
        sig.trim(),
        &payload,
        0
    )));

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let (cert, chain) = (text("pki-cert"), text("pki-chain"));
    let pki = |intermediates: bool, email: Option<&str>, host: Option<&str>| {
        let mut p = json!({"caRootsData": data("pki_root_crts.pem"), "subjectEmail": email, "subjectHostname": host});
        if intermediates {
            p["caIntermediatesData"] = json!(data("pki_intermediate_crts.pem"));
        }
        trust_root(json!({"pki": p}))
    };
    let pki_annotations = |cert: &str, chain: Option<&str>| {
        let mut a = annotations(cert, chain);
        a.remove(cip_sigstore::rekor::SET_ANNOTATION);
        a
    };
    let full = pki(true, Some("qiwan@redhat.com"), Some("myhost.example.com"));
    let verified = candidates(&full, &pki_annotations(&cert, Some(&chain)), "", b"", now).unwrap();
    assert_eq!(
        verified.valid_until,
        Some(2_591_706_520),
        "the chain's first notAfter (the root's), 2052-02-16T14:28:40Z"
    );
    assert!(refused(candidates(
        &full,
        &pki_annotations(&cert, Some("not a certificate")),
        "",
        b"",
        now
    )));
    assert!(refused(candidates(
        &full,
        &pki_annotations("not a certificate", Some(&chain)),
        "",
        b"",
        now
    )));
    assert!(refused(candidates(
        &pki(false, Some("qiwan@redhat.com"), None),
        &pki_annotations(&cert, None),
        "",
        b"",
        now
    )));
    assert!(ok(candidates(
        &pki(true, Some("qiwan@redhat.com"), None),
        &pki_annotations(&cert, None),
        "",
        b"",
        now
    )));
    assert!(ok(candidates(
        &pki(false, None, Some("myhost.example.com")),
        &pki_annotations(&cert, Some(&chain)),
        "",
        b"",
        now
    )));
    assert!(refused(candidates(
        &pki(true, None, Some("other.example.com")),
        &pki_annotations(&cert, Some(&chain)),
        "",
        b"",
        now
    )));
}
