package controller

import (
	"fmt"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"
	metav1alpha1 "istio.io/api/meta/v1alpha1"
)

func TestWithCondition(t *testing.T) {
	then := timestamppb.New(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	now := timestamppb.New(time.Date(2026, 2, 1, 0, 0, 0, 0, time.UTC))
	accepted := condition{Type: condZtunnelAccepted, Status: true, Reason: reasonAccepted, Message: "attached to ztunnel", ObservedGeneration: 2}
	current := func(conds ...*metav1alpha1.IstioCondition) *metav1alpha1.IstioStatus {
		return &metav1alpha1.IstioStatus{Conditions: conds}
	}
	ztunnel := func(status, reason string, gen int64) *metav1alpha1.IstioCondition {
		return &metav1alpha1.IstioCondition{Type: condZtunnelAccepted, Status: status, Reason: reason, Message: "attached to ztunnel", ObservedGeneration: gen, LastTransitionTime: then}
	}
	foreign := &metav1alpha1.IstioCondition{Type: "Reconciled", Status: "True"}
	tests := []struct {
		name     string
		status   *metav1alpha1.IstioStatus
		want     string // the conditions written, or "" for no write
		wantTime *timestamppb.Timestamp
	}{
		{name: "none yet", status: current(), want: "ZtunnelAccepted=True Accepted g2", wantTime: now},
		{name: "already so", status: current(ztunnel("True", reasonAccepted, 2)), want: ""},
		{name: "new generation, same status", status: current(ztunnel("True", reasonAccepted, 1)), want: "ZtunnelAccepted=True Accepted g2", wantTime: then},
		{name: "status flips", status: current(ztunnel("False", reasonInvalid, 2)), want: "ZtunnelAccepted=True Accepted g2", wantTime: now},
		{name: "others' conditions kept", status: current(foreign), want: "Reconciled=True  g0,ZtunnelAccepted=True Accepted g2", wantTime: now},
		{name: "the other owned type removed", status: current(ztunnel("True", reasonAccepted, 2), &metav1alpha1.IstioCondition{Type: condWaypointAccepted, Status: "True"}),
			want: "ZtunnelAccepted=True Accepted g2", wantTime: then},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := withCondition(tt.status, accepted, now)
			if tt.want == "" {
				if got != nil {
					t.Fatalf("withCondition wrote %v; want no write", got.Conditions)
				}
				return
			}
			if got == nil {
				t.Fatalf("withCondition = no write; want %s", tt.want)
			}
			var s string
			for i, c := range got.Conditions {
				if i > 0 {
					s += ","
				}
				s += fmt.Sprintf("%s=%s %s g%d", c.Type, c.Status, c.Reason, c.ObservedGeneration)
				if c.Type == condZtunnelAccepted && !c.LastTransitionTime.AsTime().Equal(tt.wantTime.AsTime()) {
					t.Errorf("lastTransitionTime = %v; want %v", c.LastTransitionTime.AsTime(), tt.wantTime.AsTime())
				}
			}
			if s != tt.want {
				t.Errorf("conditions = %s; want %s", s, tt.want)
			}
		})
	}
}
