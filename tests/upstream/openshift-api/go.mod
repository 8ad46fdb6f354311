module cip-webhook.test/upstream/openshift-api

go 1.24.0

// Data only: the CRD manifests under config/, operator/ and machineconfiguration/. The
// master line at 2026-07-09; the tests' pinned commit 2a3d73913b5a (2026-08-22) is not
// served by the module proxy here, and every CRD the tests read is byte-identical at both
// but machineconfigpools (a field added since).
require github.com/openshift/api v0.0.0-20260709102940-580f1c1ba691
