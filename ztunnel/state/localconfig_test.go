package state

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

const shop = `
workloads:
- name: postgres-0
  namespace: shop
  serviceAccount: db
  ips: [10.0.1.9]
  node: node-2
  labels: {app: postgres}
- name: api-1
  namespace: shop
  serviceAccount: api
  ips: ["10.0.0.7", "fd00::7"]
  labels: {app: api}
- name: legacy
  namespace: outside
  ips: [10.9.0.1]
  protocol: NONE
services:
- name: postgres
  namespace: shop
  vips: [10.96.0.10]
  ports: [{port: 5432}, {port: 80, targetPort: 8080}]
  selector: {app: postgres}
`

func TestDecode(t *testing.T) {
	s, err := Decode([]byte(shop), Options{TrustDomain: "td"})
	if err != nil {
		t.Fatal(err)
	}
	w, ok := s.WorkloadByIP(netip.MustParseAddr("10.0.1.9"))
	if !ok || w.Name != "postgres-0" || w.Identity() != "spiffe://td/ns/shop/sa/db" || w.Protocol != HBONE || w.UID != "shop/postgres-0" {
		t.Errorf("workload = %+v", w)
	}
	if w, _ := s.Workload("outside", "legacy"); w == nil || w.Protocol != None || w.ServiceAccount != "default" {
		t.Errorf("legacy = %+v", w)
	}
	if w, ok := s.WorkloadByIP(netip.MustParseAddr("fd00::7")); !ok || w.Name != "api-1" {
		t.Errorf("by IPv6: %+v", w)
	}
	svc, ok := s.ServiceByVIP(netip.MustParseAddr("10.96.0.10"))
	if !ok || svc.Hostname != "postgres.shop.svc.cluster.local" || svc.Ports[0].TargetPort != 5432 || svc.Ports[1].TargetPort != 8080 {
		t.Fatalf("service = %+v", svc)
	}
	if eps := s.Endpoints(svc); len(eps) != 1 || eps[0].Name != "postgres-0" {
		t.Errorf("endpoints = %v", eps)
	}
	if svcs := s.ServicesOf(w); len(svcs) != 1 || svcs[0] != svc {
		t.Errorf("postgres-0 services = %v", svcs)
	}
	if api, _ := s.Workload("shop", "api-1"); len(s.ServicesOf(api)) != 0 {
		t.Errorf("api-1 has services %v", s.ServicesOf(api))
	}
}

func TestDecodeErrors(t *testing.T) {
	cases := []struct{ name, doc, want string }{
		{"unknown field", "workloads: [{name: a, namespace: b, ips: [10.0.0.1], serviceaccount: x}]", `field serviceaccount not found`},
		{"missing name", "workloads: [{namespace: b, ips: [10.0.0.1]}]", "workloads[0].name: required"},
		{"bad ip", "workloads: [{name: a, namespace: b, ips: [10.0.0]}]", `workloads[0].ips[0]: "10.0.0" is not an IP address`},
		{"no ip", "workloads: [{name: a, namespace: b}]", "workloads[0].ips: at least one IP"},
		{"bad protocol", "workloads: [{name: a, namespace: b, ips: [10.0.0.1], protocol: TCP}]", `workloads[0].protocol: "TCP"`},
		{"duplicate ip", "workloads: [{name: a, namespace: b, ips: [10.0.0.1]}, {name: c, namespace: b, ips: [10.0.0.1]}]", "ip 10.0.0.1 already belongs to b/a"},
		{"duplicate name", "workloads: [{name: a, namespace: b, ips: [10.0.0.1]}, {name: a, namespace: b, ips: [10.0.0.2]}]", "b/a appears twice"},
		{"bad port", "services: [{name: s, namespace: b, ports: [{port: 0}]}]", "services[0].ports[0]: ports are 1-65535"},
		{"bad waypoint", "workloads: [{name: a, namespace: b, ips: [10.0.0.1], waypoint: wp}]", `workloads[0].waypoint: "wp" is not <namespace>/<name>`},
		{"not yaml", "workloads: [", "local config"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Decode([]byte(tc.doc), Options{})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error = %v, want it to mention %q", err, tc.want)
			}
		})
	}
}

func TestDecodeEmpty(t *testing.T) {
	for _, doc := range []string{"", "{}", "workloads: []"} {
		if s, err := Decode([]byte(doc), Options{}); err != nil || len(s.Workloads) != 0 {
			t.Errorf("Decode(%q) = %v, %v", doc, s, err)
		}
	}
}

func FuzzDecode(f *testing.F) {
	f.Add([]byte(shop))
	f.Add([]byte(`{"workloads": [{"name": "a", "namespace": "b", "ips": ["10.0.0.1"], "labels": {"app": "x"}}]}`))
	f.Add([]byte("workloads: [{name: a, namespace: b, ips: ['::ffff:10.0.0.1']}]"))
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := Decode(data, Options{})
		if err != nil {
			return
		}
		for _, w := range s.Workloads {
			for _, ip := range w.IPs {
				if got, ok := s.WorkloadByIP(ip); !ok || got != w {
					t.Fatalf("workload %s not found by its ip %s", w.UID, ip)
				}
			}
		}
	})
}

// TestLocalConfigRoundTrip: a LocalConfig written with a YAML encoder
// (as localmesh writes ztunnel's --local-config) or a JSON one decodes
// to what the hand-written file does.
func TestLocalConfigRoundTrip(t *testing.T) {
	want, err := Decode([]byte(shop), Options{TrustDomain: "td"})
	if err != nil {
		t.Fatal(err)
	}
	var lc LocalConfig
	if err := yaml.Unmarshal([]byte(shop), &lc); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		marshal func(any) ([]byte, error)
		check   func(t *testing.T, doc []byte)
	}{
		{"yaml", yaml.Marshal, func(t *testing.T, doc []byte) {
			if strings.Contains(string(doc), `""`) {
				t.Errorf("empty fields written out:\n%s", doc)
			}
		}},
		{"json", func(v any) ([]byte, error) { return json.MarshalIndent(v, "", "  ") }, func(t *testing.T, doc []byte) {
			if !strings.Contains(string(doc), `"serviceAccount": "db"`) || !strings.Contains(string(doc), `"targetPort": 8080`) {
				t.Fatalf("JSON field names are not the YAML ones:\n%s", doc)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			doc, err := tc.marshal(lc)
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, doc)
			got, err := Decode(doc, Options{TrustDomain: "td"})
			if err != nil {
				t.Fatalf("%v in:\n%s", err, doc)
			}
			if !reflect.DeepEqual(got.Workloads, want.Workloads) || !reflect.DeepEqual(got.Services, want.Services) {
				t.Errorf("round trip changed the state:\n%s", doc)
			}
		})
	}
}

func TestDecodeJSONErrors(t *testing.T) {
	cases := []struct{ name, doc, want string }{
		{"unknown field", `{"workloads": [{"name": "a", "namespace": "b", "ips": ["10.0.0.1"], "serviceAcount": "x"}]}`, `unknown field "serviceAcount"`},
		{"wrong type", "{\"workloads\": [\n  {\"name\": \"a\", \"namespace\": \"b\", \"ips\": \"10.0.0.1\"}]}", `line 2 column 51: workloads.ips is string, want []string`},
		{"missing name", `{"workloads": [{"namespace": "b", "ips": ["10.0.0.1"]}]}`, "workloads[0].name: required"},
		{"bad ip", `{"workloads": [{"name": "a", "namespace": "b", "ips": ["10.0.0"]}]}`, `workloads[0].ips[0]: "10.0.0" is not an IP address`},
		{"bad port", `{"services": [{"name": "s", "namespace": "b", "ports": [{"port": 70000}]}]}`, "services[0].ports[0]: ports are 1-65535"},
		// Not valid JSON: YAML's to read, and to refuse.
		{"truncated", `{"workloads": [`, "local config"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Decode([]byte(tc.doc), Options{})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error = %v, want it to mention %q", err, tc.want)
			}
		})
	}
}

// YAML's flow style starts with "{" too, and stays YAML.
func TestDecodeYAMLFlowStyle(t *testing.T) {
	s, err := Decode([]byte("{workloads: [{name: a, namespace: b, ips: [10.0.0.1]}]}"), Options{})
	if err != nil || len(s.Workloads) != 1 || s.Workloads[0].Name != "a" {
		t.Fatalf("Decode = %v, %v", s, err)
	}
}

// BenchmarkDecode: a 10,000-workload local config (the bench's synthetic
// shape, 5 replicas per Deployment) as YAML and as JSON; B/op is what a
// load allocates, most of it garbage at once.
func BenchmarkDecode(b *testing.B) {
	var lc LocalConfig
	for i := range 10000 {
		app := fmt.Sprintf("app-%d", i/5)
		lc.Workloads = append(lc.Workloads, LocalWorkload{
			UID: fmt.Sprintf("uid-%08d", i), Name: fmt.Sprintf("%s-%05x", app, i), Namespace: fmt.Sprintf("team-%02d", i%20),
			ServiceAccount: app, IPs: []string{fmt.Sprintf("172.16.%d.%d", i/250, i%250+1)}, Node: fmt.Sprintf("node-%d", i%50),
			Labels: map[string]string{"app": app, "version": "v1"},
		})
	}
	asYAML, err := yaml.Marshal(lc)
	if err != nil {
		b.Fatal(err)
	}
	asJSON, err := json.Marshal(lc)
	if err != nil {
		b.Fatal(err)
	}
	for _, f := range []struct {
		name string
		doc  []byte
	}{{"yaml", asYAML}, {"json", asJSON}} {
		b.Run(f.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(f.doc)))
			for b.Loop() {
				if s, err := Decode(f.doc, Options{}); err != nil || len(s.Workloads) != 10000 {
					b.Fatalf("Decode: %d workloads, %v", len(s.Workloads), err)
				}
			}
		})
	}
}

// TestReadFileRefusesNonPodAddresses: loopback, unspecified, link-local
// and multicast addresses would pass the pod-address check for traffic
// that is not the pod's; they are refused with the file and line.
func TestReadFileRefusesNonPodAddresses(t *testing.T) {
	cases := []struct {
		name, doc, want string
	}{
		{"loopback", "workloads:\n- name: a\n  namespace: b\n  ips:\n  - 10.0.0.1\n  - 127.0.0.1\n",
			":6: state: local config: workloads[0].ips[1]: 127.0.0.1 is a loopback address; a workload IP must be the pod's own routable address"},
		{"IPv6 loopback", "workloads:\n- {name: a, namespace: b, ips: [10.0.0.1]}\n- {name: c, namespace: b, ips: ['::1']}\n",
			":3: state: local config: workloads[1].ips[0]: ::1 is a loopback address"},
		{"unspecified", "workloads:\n- name: a\n  namespace: b\n  ips: [0.0.0.0]\n",
			":4: state: local config: workloads[0].ips[0]: 0.0.0.0 is the unspecified address"},
		{"IPv6 unspecified", "workloads:\n- name: a\n  namespace: b\n  ips: ['::']\n",
			":4: state: local config: workloads[0].ips[0]: :: is the unspecified address"},
		{"link-local", "workloads:\n- name: a\n  namespace: b\n  ips:\n  - 169.254.169.254\n",
			":5: state: local config: workloads[0].ips[0]: 169.254.169.254 is a link-local address"},
		{"IPv6 link-local", "workloads:\n- name: a\n  namespace: b\n  ips:\n  - fe80::1\n",
			":5: state: local config: workloads[0].ips[0]: fe80::1 is a link-local address"},
		{"IPv4-mapped loopback", "workloads:\n- name: a\n  namespace: b\n  ips:\n  - '::ffff:127.0.0.2'\n",
			":5: state: local config: workloads[0].ips[0]: 127.0.0.2 is a loopback address"},
		{"multicast", "workloads:\n- name: a\n  namespace: b\n  ips:\n  - 224.0.0.1\n",
			":5: state: local config: workloads[0].ips[0]: 224.0.0.1 is a multicast address"},
		{"service VIP", "services:\n- name: s\n  namespace: b\n  vips:\n  - 127.0.0.53\n",
			":5: state: local config: services[0].vips[0]: 127.0.0.53 is a loopback address; a service VIP must be a routable cluster address"},
		{"JSON", "{\"workloads\": [\n {\"name\": \"a\", \"namespace\": \"b\",\n  \"ips\": [\"10.0.0.1\",\n          \"127.0.0.1\"]}]}\n",
			":4: state: local config: workloads[0].ips[1]: 127.0.0.1 is a loopback address"},
		{"other field errors name the line too", "workloads:\n- name: a\n  namespace: b\n  ips: [10.0.0.1]\n  protocol: TCP\n",
			":5: state: local config: workloads[0].protocol: \"TCP\" is not HBONE or NONE"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "state.yaml")
			if err := os.WriteFile(path, []byte(tc.doc), 0o644); err != nil {
				t.Fatal(err)
			}
			_, err := LoadFile(path, Options{})
			if err == nil || !strings.HasPrefix(err.Error(), path+tc.want) {
				t.Errorf("error = %v, want %q", err, path+tc.want)
			}
			if _, err := Decode([]byte(tc.doc), Options{}); err == nil || !strings.Contains(err.Error(), "state: local config: line ") {
				t.Errorf("Decode error = %v, want it to name the line", err)
			}
		})
	}
}
