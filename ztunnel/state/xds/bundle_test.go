package xds_test

import (
	"strings"
	"testing"

	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"

	wire "github.com/regomesh/regomesh/ztunnel/state/xds"
)

func TestBundleRevisionWire(t *testing.T) {
	other, err := anypb.New(structpb.NewStringValue("r1"))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, bundle string
		body         *anypb.Any
		want         string
		wantErr      string
	}{
		{name: "mesh", bundle: wire.MeshBundle, body: wire.EncodeBundleRevision("r1"), want: "r1"},
		{name: "waypoint", bundle: wire.WaypointBundle("shop/wp"), body: wire.EncodeBundleRevision("r2"), want: "r2"},
		{name: "unknown name", bundle: "bundles/other", body: wire.EncodeBundleRevision("r1"), wantErr: "not a bundle name"},
		{name: "waypoint without gateway", bundle: "bundles/waypoint/shop", body: wire.EncodeBundleRevision("r1"), wantErr: "not a bundle name"},
		{name: "nested waypoint", bundle: "bundles/waypoint/shop/a/b", body: wire.EncodeBundleRevision("r1"), wantErr: "not a bundle name"},
		{name: "empty revision", bundle: wire.MeshBundle, body: wire.EncodeBundleRevision(""), wantErr: "no revision"},
		{name: "another type", bundle: wire.MeshBundle, body: other, wantErr: "mismatched message type"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := wire.DecodeBundleRevision(tt.bundle, tt.body)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("DecodeBundleRevision = %q, %v; want an error containing %q", got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("DecodeBundleRevision = %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}
