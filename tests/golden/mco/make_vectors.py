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
    "tv7-allowed": policy(REJECT, {"allow.io": ACCEPT, "allow.io/namespace1/namespace2": ACCEPT,
                                   "allowed-example.com/namespace1/namespace2/namespace3": ACCEPT}),
}
for name, value in vectors.items():
    with open(f"{name}.policy.json", "w") as f:
        f.write(json.dumps(value, indent=2))
with open("tv5.sigstore-registries.yaml", "w") as f:
    f.write("docker:\n  test0.com:\n    use-sigstore-attachments: true\n  test1.com:\n    use-sigstore-attachments: true\n")
