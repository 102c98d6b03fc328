// Package chartstest tests the Helm charts in charts/ through the Helm Go
// SDK and a real API server (controller/kubeharness): lint, renders for
// each documented shape of values, assertions on the rendered objects
// (labels, ztunnel's privileges, mounts, the flags each binary accepts,
// the controller's RBAC), the values schema, and every rendered object
// applied to kube-apiserver with the CRDs of charts/regomesh-base.
//
// It also holds the generator of charts/regomesh-base/files: the CRD
// manifests, copied from the module cache at the versions go.mod pins
// (`make charts-crds`, which is go test -run TestCRDsMatchModules -update).
package chartstest
