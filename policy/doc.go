// Package policy is regomesh's decision engine: every allow/deny in the
// mesh is the value of data.mesh.authz.decision (the library in rego/)
// for one input document, evaluated in-process.
//
// An Engine loads a set of OPA bundles (ReadBundle: directories or
// .tar.gz, signatures verified) as one generation: activated with the
// library as OPA activates bundles, compiled, and swapped in atomically; a
// set that fails keeps the previous one in force, and before the first,
// every decision denies with "no policy loaded". Decide answers an Input
// for layer l4 (ztunnel) or l7 (waypoint) with a Decision naming the
// policy and rule that decided; Explain says why, rule by rule.
//
// Decisions do not run OPA's topdown evaluator on the hot path: the
// contribution rules are lowered to Go matchers (lower.go) behind a rule
// index (index.go), and only packages outside that fragment are evaluated
// by topdown. A differential test holds the native program to topdown's
// answers. L4 decisions are cached by the input fields the policy reads.
package policy
