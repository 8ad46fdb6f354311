module cip-webhook.test/upstream/openshift-api-4.20

go 1.24.0

// Data only: branch release-4.20, whose v1alpha1 ClusterImagePolicy and ImagePolicy CRDs
// (TechPreviewNoUpgrade) carry the last v1alpha1 rules openshift/api shipped.
require github.com/openshift/api v0.0.0-20260716173118-05da40ea9855
