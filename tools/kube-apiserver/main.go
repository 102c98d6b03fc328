// Command kube-apiserver is the real Kubernetes API server, built from
// k8s.io/kubernetes at the version this module pins, for the controller's
// tests (controller/kubeharness). It lives in its own module so that
// Kubernetes' pins never meet the main module's or SPIRE's.
package main

import (
	"os"

	"k8s.io/component-base/cli"
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
)

func main() {
	os.Exit(cli.Run(app.NewAPIServerCommand()))
}
