// Package istio translates Istio AuthorizationPolicy resources into Rego
// for regomesh's policy engine, so an Istio user's YAML keeps working and
// its decisions are Rego that can be read, tested and extended.
//
// The pipeline is Decode (multi-document YAML, security.istio.io/v1 and
// v1beta1, through istio.io/api and istio.io/client-go types) into plain
// Policy values, then Translate, which validates each policy as Istio's
// admission does and writes one Rego module per policy:
//
//	package mesh.policies.istio["<namespace>.<name>"]
//
// contributing to the mesh.authz library's sets (allow, allow_scope, deny,
// audit, custom_deny; rego/mesh/authz/authz.rego) entries
// {"policy": "<namespace>/<name>", "rule": <index>}. The library combines
// them in Istio's order: CUSTOM, DENY, ALLOW.
//
// Each module holds both layers. Rules ztunnel can enforce in full apply
// at L4 and L7; an ALLOW rule with HTTP attributes applies at L7 only (at
// L4 it is dropped, so an ALLOW whose rules are all dropped denies every
// connection); a DENY rule with HTTP attributes applies in full at L7 and
// without them at L4, where a from, to or when left with nothing never
// matches. Translation.Warnings report each such downgrade in Istio's
// words. Policies with targetRefs apply in waypoints only; AUDIT and
// CUSTOM too, since ztunnel does not support them.
//
// The generated Rego stays inside the engine's native fragment (equality
// and set membership, startswith/endswith, net.cidr_contains,
// regex.match, lower, not, boolean helper rules), with the selective
// equalities (destination namespace and labels, exact principals) as
// top-level conditions the engine indexes. The exceptions are CUSTOM
// policies whose provider Rego is not native and wildcard patterns
// against list-valued claims or audiences, which need iteration.
//
// PeerAuthentications (DecodeAll, TranslateAll) become modules of their
// own, package mesh.policies.istio_peerauthentication["<namespace>.<name>"]:
// Istio's precedence (port, workload, namespace, mesh; UNSET inherits;
// PERMISSIVE by default) is resolved at translation, and a STRICT mode is
// a deny of plaintext (input.connection.mtls false) in the module of the
// policy that decides it, except where a more specific policy or port
// sets a mode (peerauthn_translate.go). Where Istio takes the oldest of
// several at one level, the translation takes the first by name and warns.
//
// WriteBundleDir and WriteBundleTarGz write the result as an OPA bundle
// (root mesh/policies/istio) that policy.ReadBundle and the stock opa CLI
// both load.
//
// Where Istio's reference leaves room, the translation follows what
// Envoy and ztunnel do:
//
//   - A not-form matches when the attribute is absent: notPrincipals
//     matches a plaintext peer, notRequestPrincipals a request without a
//     credential (ztunnel's NOT(any) over an absent identity; Envoy's
//     not_id). Hence `notPrincipals: ["*"]` in a DENY requires mTLS.
//   - "*" is any non-empty value, except for request.headers[...], where it
//     is Envoy's present_match: a header sent with an empty value matches.
//     On a JWT claim or the audiences it is Envoy's `.+` string match: a
//     non-empty string, or a list holding one; a number or a boolean
//     claim never matches.
//   - A Gateway in targetRefs names a waypoint, and the input document does
//     not say which waypoint evaluates it: such policies apply only in the
//     bundle translated for that waypoint (Options.Waypoint). There, every
//     decision is the waypoint's, so targetRefs policies also decide the
//     connections it relays as TCP (layer l4), with ztunnel's downgrade of
//     rules with HTTP attributes; elsewhere they apply at l7 only.
//   - Path templates compile to Envoy's uri_template expressions: {*} is
//     one or more RFC 3986 pchar but "*", {**} any run of them and "/".
//   - requestPrincipals (and request.auth.principal) split at the last "/"
//     into an issuer and a subject pattern, matched on their own against
//     the principal "<iss>/<sub>" split at its last "/", as Istio does
//     since 1.22: "https://issuer.exa*" is issuer "https:/" and a subject
//     starting "issuer.exa". A subject that holds "/" is read as part of
//     the issuer, since the input carries one principal string.
//   - In a waypoint, namespaces (and source.namespace) with a "*" are
//     Istio's regular expression `.*/ns/<value>/.*` over the principal,
//     each "*" a `.*`, so "a*c" matches "abc" and "*a" every Kubernetes
//     identity (`.*` spans "/sa"); ztunnel matches them as string
//     patterns. A rule with such a value gets one contribution per layer.
//     A value without "*", and "*" alone, compare with the namespace the
//     engine derives from a Kubernetes-style SPIFFE ID in both layers (the
//     same answer as Istio's expression on such IDs; on other IDs, which
//     have no namespace here, they never match).
//   - Principals are written without "spiffe://", as in Istio; a value that
//     carries the scheme never matches (Envoy prefixes it once more).
//   - AUDIT and CUSTOM are not enforced at L4, as ztunnel does not support
//     them; each such policy gets Istio's warning.
//   - Trust domain aliases (Options.TrustDomainAliases, and "cluster.local"
//     for the mesh's trust domain) expand principals in waypoints only:
//     ztunnel compares principals as written, as Istio's does.
//   - trustDomains, notTrustDomains and source.trustDomain match the
//     principal's trust domain, the mesh's aliases expanded, with the
//     first "*" a wildcard anywhere in the value (Istio's
//     srcTrustDomainGenerator). ztunnel ignores the fields: at L4 a source
//     is matched without them, and one with nothing else matches nothing.
//   - A CUSTOM policy whose provider is not in Options.Providers is not an
//     error: as Istio's waypoint does with an undefined provider, its
//     rules deny every request they match (and nothing else), with a
//     warning.
package istio
