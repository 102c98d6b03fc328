// Package bundleserver serves the controller's policy bundles over the
// OPA bundle service protocol, signed, so that any OPA client (the
// proxies' downloader is OPA's own v1/download) can read them, and any
// OPA bundle server could stand in for the controller.
//
// Resources, each an OPA bundle (.tar.gz):
//
//	GET /bundles/mesh                            the mesh-wide bundle, read by every ztunnel
//	GET /bundles/waypoint/<namespace>/<gateway>  a waypoint's bundle, read by that waypoint
//
// The protocol is OPA's: each 200 carries the bundle with an ETag (its
// .manifest revision, quoted) and the media type
// application/vnd.openpolicyagent.bundles, which tells OPA's downloader
// the server long-polls; If-None-Match naming the ETag served (alone or
// among the older ones OPA lists) is answered 304; with Prefer:
// wait=<seconds> that answer is held until the revision changes (then
// 200 with the new bundle) or the wait ends (304), capped by
// Config.MaxWait.
//
// Clients authenticate with their SVIDs over mutual TLS and are
// identified by the state stream's own mapping (xds.Server.Identify): a
// ztunnel reads the mesh bundle, a waypoint its own Gateway's, nothing
// else (403); a client without an SVID of the trust domain does not
// complete the handshake.
//
// Bundles are signed with OPA's bundle package (Bundle.GenerateSignature,
// as `opa build --signing-key` signs), with a PEM private key and RS256
// (default) or another RS, PS or ES algorithm; the signature names its
// key (DefaultKeyID unless configured). Serving unsigned bundles must be
// asked for (Config.Unsigned). A bundle without modules (a cluster
// without policies) declares itself empty in its .manifest, as the
// proxies require of a bundle meant to hold no policy. A bundle that
// fails to sign leaves the revision served before in place.
package bundleserver
