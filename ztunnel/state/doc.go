// Package state is what a ztunnel knows about the mesh: workloads (pods)
// and services, read from a local-config file today and from the
// controller's stream later. The file (YAML, or the same fields as JSON,
// which loads a large state in a third of the memory) is decoded and
// validated once, at the edge, into the plain types here; everything else
// reads those.
//
// A local-config file:
//
//	workloads:
//	- name: postgres-0
//	  namespace: shop
//	  serviceAccount: db
//	  ips: [10.0.1.9]
//	  node: node-2
//	  labels: {app: postgres}
//	services:
//	- name: postgres
//	  namespace: shop
//	  vips: [10.96.0.10]
//	  ports: [{port: 5432, targetPort: 5432}]
//	  selector: {app: postgres}
package state
