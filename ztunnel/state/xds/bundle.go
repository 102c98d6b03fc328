package xds

import (
	"fmt"
	"net"
	"strconv"
	"strings"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// BundleTypeURL is the stream's second resource type: which revision of
// each policy bundle the proxy reads is current. A resource's name is the
// bundle's path at the controller's bundle server (without the leading
// "/"), its version and its value (a google.protobuf.StringValue) the
// bundle's .manifest revision. A ztunnel is sent MeshBundle; a waypoint
// WaypointBundle of its Gateway. The proxy fetches the bundle itself over
// the OPA bundle service protocol; the stream only says what is current,
// so a proxy can tell it is behind and report what it runs.
//
// A well-known type, so that the stream needs no proto of its own.
const BundleTypeURL = "type.googleapis.com/google.protobuf.StringValue"

// MeshBundle is the mesh-wide bundle every ztunnel reads: OPA's default
// resource for a bundle named "mesh".
const MeshBundle = "bundles/mesh"

// waypointBundlePrefix starts every waypoint's bundle name.
const waypointBundlePrefix = "bundles/waypoint/"

// WaypointBundle is the bundle of the waypoint ref ("<namespace>/<gateway>"):
// bundles/waypoint/<namespace>/<gateway>.
func WaypointBundle(ref string) string { return waypointBundlePrefix + ref }

// BundlePort is the port of the controller's bundle server (its
// --bundle-addr) beside the stream's.
const BundlePort = 15013

// BundleServerURL is the controller's bundle server for a proxy whose
// stream goes to controller ("HOST:PORT"): the same host, BundlePort,
// HTTPS.
func BundleServerURL(controller string) (string, error) {
	host, _, err := net.SplitHostPort(controller)
	if err != nil || host == "" {
		return "", fmt.Errorf("xds: controller address %q: want HOST:PORT", controller)
	}
	return "https://" + net.JoinHostPort(host, strconv.Itoa(BundlePort)), nil
}

// IsBundle reports whether name is a bundle's name: MeshBundle or a
// waypoint's.
func IsBundle(name string) bool {
	if name == MeshBundle {
		return true
	}
	ref, ok := strings.CutPrefix(name, waypointBundlePrefix)
	ns, gw, ok2 := strings.Cut(ref, "/")
	return ok && ok2 && ns != "" && gw != "" && !strings.Contains(gw, "/")
}

// EncodeBundleRevision is a bundle's revision on the wire.
func EncodeBundleRevision(revision string) *anypb.Any {
	b, err := proto.Marshal(wrapperspb.String(revision))
	if err != nil {
		panic(fmt.Sprintf("xds: a StringValue does not marshal: %v", err)) // cannot happen
	}
	return &anypb.Any{TypeUrl: BundleTypeURL, Value: b}
}

// DecodeBundleRevision reads the revision of the bundle resource name.
func DecodeBundleRevision(name string, a *anypb.Any) (string, error) {
	if !IsBundle(name) {
		return "", fmt.Errorf("%q is not a bundle name (%s or %s<namespace>/<gateway>)", name, MeshBundle, waypointBundlePrefix)
	}
	var v wrapperspb.StringValue
	if err := a.UnmarshalTo(&v); err != nil {
		return "", fmt.Errorf("bundle %s: %w", name, err)
	}
	if v.GetValue() == "" {
		return "", fmt.Errorf("bundle %s: no revision", name)
	}
	return v.GetValue(), nil
}
