// Command regomesh-cni is a chained CNI plugin: on ADD it tells the node's
// ztunnel to capture the new pod's traffic, on DEL to release it.
package main

import (
	"context"
	"os"

	"github.com/regomesh/regomesh/ztunnel/cni"
)

func main() {
	os.Exit(cni.RunPlugin(context.Background(), os.Getenv, os.Stdin, os.Stdout))
}
