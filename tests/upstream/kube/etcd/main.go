// etcd as go.etcd.io/etcd/server/v3 builds it: the real server, at the version
// k8s.io/kubernetes pins, for the tests' kube-apiserver.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
