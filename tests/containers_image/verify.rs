//! `verify` against containers/image on the same registry: for every case of a matrix
//! (who signed, with which kind of key, for which identity, on the index or the instance,
//! by tag or by digest, under each signedIdentity policy) our verdict and
//! `civerify decide`'s agree.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

use testkit::paths::{b64, cosign_pub};
use testkit::registry::{decide, openssl_key, openssl_keypair, Registry, SigningKey};

/// Repositories under the registry, each holding one way of being signed.
const TEAM_REPOS: [&str; 4] = ["team", "other", "unsigned", "elsewhere"];
const OPENSSL_REPOS: [&str; 5] = ["nameonly", "exact", "badigest", "index", "instance"];
/// Signed with openssl keys of the other kinds sigstore verifies, one policy each.
const KEY_KINDS: [&str; 3] = ["rsa", "p384", "ed25519"];

struct Fixture {
    registry: Registry,
    work: tempfile::TempDir,
    team: SigningKey,
    /// (kind, public key PEM) per openssl key.
    other_keys: Vec<(String, String)>,
    /// Each repo's digest of the image the node pulls (the amd64 instance for indexes).
    digests: Vec<(String, String)>,
}

fn fixture() -> Fixture {
    let registry = Registry::start();
    let host = registry.host.clone();
    let work = tempfile::tempdir().unwrap();
    let team = SigningKey::generate(work.path(), "team");
    let other = SigningKey::generate(work.path(), "other");
    let layout = registry.oci_layout("app", "amd64");
    let mut digests = Vec::new();
    let mut push = |repo: &str, key: Option<&SigningKey>, identity: Option<String>| {
        let d = registry.push(&layout, &format!("{repo}/app:v1"), key, identity.as_deref());
        digests.push((repo.to_string(), d.clone()));
        d
    };
    push("team", Some(&team), None);
    push("other", Some(&other), None);
    push("unsigned", None, None);
    push(
        "elsewhere",
        Some(&team),
        Some(format!("{host}/somewhere/app:v1")),
    );
    // cosign's default identity: the repository alone.
    let d = push("nameonly", None, None);
    registry.attach_openssl_signature(
        "nameonly/app",
        &d,
        &format!("{host}/nameonly/app"),
        &openssl_key(),
    );
    let d = push("exact", None, None);
    registry.attach_openssl_signature(
        "exact/app",
        &d,
        &format!("{host}/exact/app:v1"),
        &openssl_key(),
    );
    // Signed for another manifest, stored under this one's tag.
    let d = push("badigest", None, None);
    let wrong = format!("sha256:{}", "0".repeat(64));
    registry.attach_openssl_signature_for(
        "badigest/app",
        &d,
        &wrong,
        &format!("{host}/badigest/app:v1"),
        &openssl_key(),
    );
    // Multi-arch: the signature on the index only (containers/image#1953), or on the instance.
    let (index, amd64) = registry.push_index("index/app", "v1");
    registry.attach_openssl_signature(
        "index/app",
        &index,
        &format!("{host}/index/app:v1"),
        &openssl_key(),
    );
    digests.push(("index".into(), amd64));
    let (_, amd64) = registry.push_index("instance/app", "v1");
    registry.attach_openssl_signature(
        "instance/app",
        &amd64,
        &format!("{host}/instance/app:v1"),
        &openssl_key(),
    );
    digests.push(("instance".into(), amd64));
    let mut other_keys = Vec::new();
    for kind in KEY_KINDS {
        let (private, public) = openssl_keypair(work.path(), kind);
        let d = registry.push(&layout, &format!("{kind}/app:v1"), None, None);
        registry.attach_openssl_signature(
            &format!("{kind}/app"),
            &d,
            &format!("{host}/{kind}/app:v1"),
            &private,
        );
        digests.push((kind.to_string(), d));
        other_keys.push((kind.to_string(), public));
    }
    Fixture {
        registry,
        work,
        team,
        other_keys,
        digests,
    }
}

/// A ClusterImagePolicy over `repos` with this key and signedIdentity.
fn policy(name: &str, host: &str, repos: &[&str], key_pem: &str, identity: &Value) -> Value {
    let scopes: Vec<String> = repos.iter().map(|r| format!("{host}/{r}")).collect();
    json!({
        "apiVersion": "config.openshift.io/v1", "kind": "ClusterImagePolicy",
        "metadata": {"name": name},
        "spec": {"scopes": scopes, "policy": {
            "rootOfTrust": {"policyType": "PublicKey", "publicKey": {"keyData": b64(key_pem)}},
            "signedIdentity": identity}}
    })
}

/// An input directory for one signedIdentity mode, and the node files rendered from it.
fn input(f: &Fixture, mode: &str, identity: &Value) -> (PathBuf, PathBuf) {
    let host = &f.registry.host;
    let mut docs = vec![
        policy("team", host, &TEAM_REPOS, &f.team.public_pem, identity),
        policy("openssl", host, &OPENSSL_REPOS, &cosign_pub(), identity),
    ];
    for (kind, public) in &f.other_keys {
        docs.push(policy(kind, host, &[kind.as_str()], public, identity));
    }
    render_input(&f.work.path().join(mode), host, &docs)
}

/// `docs` beside an Image CR that marks `host` insecure, written under `dir/input`, and
/// the worker pool's node files rendered from them under `dir/files`.
pub fn render_input(dir: &Path, host: &str, docs: &[Value]) -> (PathBuf, PathBuf) {
    let input = dir.join("input");
    std::fs::create_dir_all(&input).unwrap();
    let image = json!({"apiVersion": "config.openshift.io/v1", "kind": "Image",
        "metadata": {"name": "cluster"},
        "spec": {"registrySources": {"insecureRegistries": [host]}}});
    for (i, doc) in std::iter::once(&image).chain(docs).enumerate() {
        std::fs::write(input.join(format!("{i}.yaml")), doc.to_string()).unwrap();
    }
    let files = dir.join("files");
    let out = Command::new(env!("CARGO_BIN_EXE_cip-webhook"))
        .args(["render", "--input"])
        .arg(&input)
        .arg("--files")
        .arg(&files)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let worker = files.join("worker");
    let conf = worker.join("etc/containers/registries.conf");
    std::fs::write(
        &conf,
        format!("[[registry]]\nlocation = \"{host}\"\ninsecure = true\n"),
    )
    .unwrap();
    std::fs::create_dir_all(worker.join("etc/containers/registries.d")).unwrap();
    (input, worker)
}

/// `image` judged by us (from `input`) and by containers/image (from the node files under
/// `worker`): our verdict word, our JSON, and the disagreement if the two differ in
/// verdict or exit code.
pub fn both(
    input: &Path,
    worker: &Path,
    mode: &str,
    image: &str,
) -> (String, Value, Option<String>) {
    let theirs = decide(
        &worker.join("etc/containers/policy.json"),
        &worker.join("etc/containers/registries.d"),
        Some(&worker.join("etc/containers/registries.conf")),
        image,
    );
    let (verdict, code, json) = ours(input, image);
    let expected = match theirs.verdict.as_str() {
        "accepted" => ("accepted", 0),
        "rejected" => ("refused", 1),
        _ => ("error", -1),
    };
    let disagreement = ((verdict.as_str(), code) != expected).then(|| {
        format!(
            "{mode} {image}: containers/image {} ({}), we {verdict} ({})",
            theirs.verdict, theirs.message, json["reason"]
        )
    });
    (verdict, json, disagreement)
}

/// Our verdict: (verdict word, exit code, the JSON).
pub fn ours(input: &Path, image: &str) -> (String, i32, Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_cip-webhook"))
        .args(["verify", "--format", "json", "--input"])
        .arg(input)
        .arg(image)
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{image}: {e}: {}", String::from_utf8_lossy(&out.stderr)));
    (
        v["verdict"].as_str().unwrap().to_string(),
        out.status.code().unwrap(),
        v,
    )
}

#[test]
fn verify_agrees_with_containers_image_on_every_case() {
    let f = fixture();
    let host = f.registry.host.clone();
    let modes = [
        (
            "repo-digest-or-exact",
            json!({"matchPolicy": "MatchRepoDigestOrExact"}),
        ),
        ("repository", json!({"matchPolicy": "MatchRepository"})),
        (
            "exact-repository",
            json!({"matchPolicy": "ExactRepository", "exactRepository": {"repository": format!("{host}/exact/app")}}),
        ),
        (
            "remap",
            json!({"matchPolicy": "RemapIdentity", "remapIdentity": {"prefix": format!("{host}/nameonly"), "signedPrefix": format!("{host}/exact")}}),
        ),
    ];
    let mut cases = 0;
    let mut tally = std::collections::BTreeMap::new();
    let mut disagreements = Vec::new();
    for (mode, identity) in &modes {
        let (input, worker) = input(&f, mode, identity);
        for (repo, digest) in &f.digests {
            for image in [
                format!("{host}/{repo}/app:v1"),
                format!("{host}/{repo}/app@{digest}"),
            ] {
                let (verdict, _, disagreement) = both(&input, &worker, mode, &image);
                cases += 1;
                *tally.entry(verdict.clone()).or_insert(0) += 1;
                disagreements.extend(disagreement);
            }
        }
    }
    println!("{cases} cases: {tally:?}");
    assert!(cases >= 40);
    assert!(disagreements.is_empty(), "{}", disagreements.join("\n"));
    // Both verdicts occur: the matrix is not one-sided.
    assert!(
        tally.get("accepted").copied().unwrap_or(0) >= 8,
        "{tally:?}"
    );
    assert!(tally.get("refused").copied().unwrap_or(0) >= 8, "{tally:?}");
}

/// The reasons people meet first, named as containers/image names them.
#[test]
fn verify_names_the_common_surprises() {
    let f = fixture();
    let host = f.registry.host.clone();
    let (input, _) = input(
        &f,
        "default",
        &json!({"matchPolicy": "MatchRepoDigestOrExact"}),
    );
    let (v, code, j) = ours(&input, &format!("{host}/nameonly/app:v1"));
    assert_eq!((v.as_str(), code), ("refused", 1), "{j}");
    assert!(
        j["reason"].as_str().unwrap().contains("is not accepted"),
        "{j}"
    );
    let (v, _, j) = ours(&input, &format!("{host}/index/app:v1"));
    assert_eq!(v, "refused", "{j}");
    assert!(
        j["reason"]
            .as_str()
            .unwrap()
            .contains("no signature exists"),
        "{j}"
    );
    assert_eq!(
        j["instance"],
        json!(f.digests.iter().find(|(r, _)| r == "index").unwrap().1)
    );
    let (v, code, j) = ours(&input, &format!("{host}/exact/app:v1"));
    assert_eq!((v.as_str(), code), ("accepted", 0), "{j}");
    assert_eq!(j["layers"][0]["verdict"], "accepted");
    assert_eq!(j["source"], format!("{host}/exact/app:v1"));
    // Outside every scope: no signature required, no registry call.
    let (v, code, j) = ours(&input, "quay.io/any/thing:v1");
    assert_eq!((v.as_str(), code), ("accepted", 0), "{j}");
    assert_eq!(j["noSignatureRequired"], true);
    assert_eq!(j["registryRequests"], 0);
    // A registry that does not answer: unknown, exit 3, never refused.
    let closed = format!("127.0.0.1:{}", testkit::paths::free_port());
    let dir = f.work.path().join("closed");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("p.yaml"),
        policy(
            "p",
            &closed,
            &["x"],
            &cosign_pub(),
            &json!({"matchPolicy": "MatchRepository"}),
        )
        .to_string(),
    )
    .unwrap();
    let (v, code, j) = ours(&dir, &format!("{closed}/x/app:v1"));
    assert_eq!((v.as_str(), code), ("unknown", 3), "{j}");
}
