#!/usr/bin/env python3
"""Writes the expected policy.json of MCO's test vectors (mco-behavior.md §8).

An oracle independent of the Rust code: the requirement JSON is copied from MCO's
tests, field order kept; Python's json.dumps(indent=2) writes what Go's
json.MarshalIndent(v, "", "  ") writes for ASCII text without <, > or &.
Run from this directory; the outputs are committed.
"""
import json
from collections import OrderedDict

load = lambda s: json.loads(s, object_pairs_hook=OrderedDict)
REMAP = '{"type":"remapIdentity","prefix":"test-remap-prefix","signedPrefix":"test-remap-signed-prefix"}'
R0 = load('{"type":"sigstoreSigned","fulcio":{"caData":"dGVzdC1jYS1kYXRhLWRhdGE=","oidcIssuer":"https://OIDC.example.com","subjectEmail":"test-user@example.com"},"rekorPublicKeyData":"dGVzdC1yZWtvci1rZXktZGF0YQ==","signedIdentity":' + REMAP + '}')
R1 = load('{"type":"sigstoreSigned","keyData":"dGVzdC1rZXktZGF0YQ==","rekorPublicKeyData":"dGVzdC1yZWtvci1rZXktZGF0YQ==","signedIdentity":' + REMAP + '}')
CA = "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCk1JSUJBVEE9Ci0tLS0tRU5EIENFUlRJRklDQVRFLS0tLS0="
RP = load('{"type":"sigstoreSigned","pki":{"caRootsData":"%s","caIntermediatesData":"%s","subjectEmail":"test-user@example.com","subjectHostname":"my-host.example.com"},"signedIdentity":{"type":"matchRepoDigestOrExact"}}' % (CA, CA))
ACCEPT = [OrderedDict(type="insecureAcceptAnything")]
REJECT = [OrderedDict(type="reject")]


def policy(default, docker):
    docker = OrderedDict(sorted(docker.items()))
    atomic = OrderedDict((k, v) for k, v in docker.items() if k.count("/") < 3)
    transports = OrderedDict([("atomic", atomic), ("docker", docker),
                              ("docker-daemon", OrderedDict([("", ACCEPT)]))])
    return OrderedDict([("default", default), ("transports", transports)])


vectors = {
    "tv1": policy(ACCEPT, {"test0.com": [R0], "test3.com/ns/repo": [RP]}),
    "tv2": policy(REJECT, {"allow.io": ACCEPT, "test0.com": [R0]}),
    "tv3": policy(ACCEPT, {"test0.com": [R0, R1], "test1.com": [R1]}),
    "tv7-blocked": policy(ACCEPT, {"block.com": REJECT, "*.blocked-example.com": REJECT}),
    # A blocked registry over the payload repository, which a mirror serves (§3).
    "payload-mirror": policy(ACCEPT, {"quay.io": REJECT,
                                      "quay.io/openshift-release-dev/ocp-release": ACCEPT}),
    "tv7-allowed": policy(REJECT, {"allow.io": ACCEPT, "allow.io/namespace1/namespace2": ACCEPT,
                                   "allowed-example.com/namespace1/namespace2/namespace3": ACCEPT}),
}
for name, value in vectors.items():
    with open(f"{name}.policy.json", "w") as f:
        f.write(json.dumps(value, indent=2))
RK = load('{"type":"sigstoreSigned","keyData":"dGVzdC1rZXktZGF0YQ==","signedIdentity":{"type":"matchRepoDigestOrExact"}}')
TV3 = {"test0.com": [R0, R1], "test1.com": [R1]}
# TV4: each namespace's file is TV3 plus its own scopes (test0.com is a cluster scope, dropped).
vectors["tv4-test-1-namespace"] = policy(ACCEPT, dict(TV3, **{"test3.com": [RK]}))
vectors["tv4-testnamespace"] = policy(ACCEPT, dict(TV3, **{"test2.com": [RK], "test4.com/ns-policy/repo": [RP]}))
for name, value in vectors.items():
    if name.startswith("tv4-"):
        with open(f"{name}.policy.json", "w") as f:
            f.write(json.dumps(value, indent=2))


def sigstore_yaml(keys):
    """keys in the order MCO's test lists them (yaml.v2 natural order)."""
    out = "docker:\n"
    for k in keys:
        if len(k) > 128:
            out += f"  ? {k}\n  : use-sigstore-attachments: true\n"
        else:
            out += f"  {k}:\n    use-sigstore-attachments: true\n"
    return out


DIGEST0 = "a.com/a1/a2@sha256:" + "0" * 64
TV6 = {
    "tv6a": ["'*.example.com'", "a-a1-a2-a3-1.mirror/m1/m2/m3", "a-a1-a2-a3.mirror/m1/m2/m3",
             "a-a1-a2.mirror/a1/a2", "a.com/a1/a2", "a.com/a1/a2/a3", "a.com/a1/a2/a3-1", DIGEST0,
             "foo.example.com/ns/repo", "policy.scope"],
    "tv6b": ["'*.example.com'", "a-a1.mirror/a1/a2", "a.com/a1/a2", DIGEST0,
             "foo.example.com/ns/repo", "policy.scope"],
    "tv6c": ["'*.example.com'", "a.com/a1/a2", DIGEST0, "foo.example.com/ns/repo",
             "our.mirror/example", "our.mirror/example/ns/repo", "policy.scope"],
}
for name, keys in TV6.items():
    with open(f"{name}.sigstore-registries.yaml", "w") as f:
        f.write(sigstore_yaml(keys))

# yaml.v2 v2.4.0 corners (in its natural order: digit runs by value, 0 < 123): a
# float-looking key is double-quoted, a Go hex float is not
# (yamlStyleFloat does not match it), and a key of 129 bytes is a complex key.
LONG = "registry.example.com/" + "a" * 108
with open("yaml-corners.sigstore-registries.yaml", "w") as f:
    f.write(sigstore_yaml(["0x1.8p1", '"123.456"', "registry.example.com/" + "a" * 107, LONG]))

with open("tv5.sigstore-registries.yaml", "w") as f:
    f.write("docker:\n  test0.com:\n    use-sigstore-attachments: true\n  test1.com:\n    use-sigstore-attachments: true\n")
