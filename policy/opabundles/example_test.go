package opabundles_test

import (
	"fmt"
	"maps"
	"slices"

	"github.com/regomesh/regomesh/policy/opabundles"
)

// An OPA configuration file, read as ztunnel's --opa-config reads it:
// OPA's defaults are filled in, and what the proxies ignore is reported
// (nothing here: the labels go with the status reports).
func ExampleParseConfig() {
	cfg, err := opabundles.ParseConfig([]byte(`
services:
  acmecorp:
    url: https://bundles.example.com
bundles:
  authz:
    polling: {long_polling_timeout_seconds: 60}
  team:
    service: acmecorp
    resource: team/bundle.tar.gz
status:
  service: acmecorp
labels:
  team: payments
`))
	if err != nil {
		panic(err)
	}
	for _, name := range slices.Sorted(maps.Keys(cfg.Bundles)) {
		b := cfg.Bundles[name]
		fmt.Printf("%s: GET %s from %s\n", name, b.Resource, b.Service)
	}
	fmt.Printf("status: POST %s to %s\n", cfg.Status.Resource, cfg.Status.Service)
	for _, w := range cfg.Warnings {
		fmt.Println("warning:", w)
	}
	// Output:
	// authz: GET bundles/authz from acmecorp
	// team: GET team/bundle.tar.gz from acmecorp
	// status: POST /status to acmecorp
}
