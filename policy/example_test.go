package policy_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"

	"github.com/regomesh/regomesh/policy"
)

// A ztunnel asks the engine about one connection.
func ExampleEngine_Decide() {
	engine, err := policy.NewEngine(policy.Config{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		panic(err)
	}
	bundle, err := policy.ReadBundle("testdata/engine/shop", nil)
	if err != nil {
		panic(err)
	}
	if err := engine.Load(context.Background(), bundle); err != nil {
		panic(err)
	}
	for _, port := range []int{5432, 5433} {
		d, err := engine.Decide(context.Background(), policy.Input{
			Layer:       policy.L4,
			Source:      policy.Source{Principal: "spiffe://td/ns/shop/sa/api", IP: "10.0.0.7"},
			Destination: policy.Destination{Port: port, Namespace: "shop", Workload: "postgres-0", Labels: map[string]string{"app": "postgres"}},
			Connection:  policy.Connection{MTLS: true},
		})
		if err != nil {
			panic(err)
		}
		fmt.Printf("port %d: allow=%t policy=%q rule=%q reason=%q\n", port, d.Allow, d.Policy, d.Rule, d.Reason)
	}
	// Output:
	// port 5432: allow=true policy="shop/db" rule="api-only" reason="allowed by ALLOW policy"
	// port 5433: allow=false policy="" rule="" reason="no ALLOW policy matched; selecting the destination: shop/db"
}
