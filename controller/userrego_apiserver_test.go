package controller_test

import (
	"os"
	"path/filepath"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/regomesh/regomesh/controller"
	"github.com/regomesh/regomesh/policy"
)

// userDeny is a user's Rego: deny connections to port, through the
// library's deny point.
func userDeny(port string) string {
	return `package mesh.policies.tenant.guard

deny contains {"policy": "tenant/guard", "rule": "no-` + port + `", "reason": "port ` + port + ` is closed"} if input.destination.port == ` + port + "\n"
}

const userModule = "mesh/policies/tenant/guard/guard.rego"

// testUserRego follows a labelled ConfigMap of Rego through the
// controller: added, its module is in the next bundle and the engine
// decides with it; edited, a new revision; broken, the revision stays,
// with the problem published and an Event on the ConfigMap; its label
// removed, gone, and back with it; deleted, gone. An unlabelled
// ConfigMap is not read.
func testUserRego(e *env) {
	e.namespace("tenant", nil)
	cms := e.kube.CoreV1().ConfigMaps("tenant")
	if _, err := cms.Create(e.ctx, &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "unlabelled"},
		Data:       map[string]string{"other.rego": "package mesh.policies.tenant.other\n\ndeny if true\n"},
	}, metav1.CreateOptions{}); err != nil {
		e.t.Fatal(err)
	}
	cm, err := cms.Create(e.ctx, &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "guard", Labels: map[string]string{"regomesh.io/rego": "true"}},
		Data:       map[string]string{"guard.rego": userDeny("9000")},
	}, metav1.CreateOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	u := e.waitFor("the ConfigMap's module in the bundle", func(u *controller.Update) string {
		if got := u.Bundle.Translation.Modules[userModule]; got != userDeny("9000") {
			return "module " + userModule + ": " + moduleNames(u.Bundle)
		}
		return ""
	})
	if strings.Contains(moduleNames(u.Bundle), "other") {
		e.t.Errorf("an unlabelled ConfigMap's module is in the bundle: %s", moduleNames(u.Bundle))
	}
	engine := e.engineOf(u.Bundle)
	e.decide(engine, 9000, false, "tenant/guard", "port 9000 is closed")
	e.decide(engine, 8080, true, "", "")

	// A namespace the controller does not list may not add Rego, which
	// would decide for the whole mesh: refused, reported, left out.
	e.namespace("outsider", nil)
	outsider, err := e.kube.CoreV1().ConfigMaps("outsider").Create(e.ctx, &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "open", Labels: map[string]string{"regomesh.io/rego": "true"}},
		Data:       map[string]string{"open.rego": "package mesh.policies.outsider.open\n\nallow if true\n"},
	}, metav1.CreateOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	u = e.waitFor("the outsider's ConfigMap refused", func(u *controller.Update) string {
		for _, p := range u.Problems {
			if p.Kind == "ConfigMap" && p.Namespace == "outsider" && strings.Contains(p.String(), "namespace outsider may not add Rego") {
				return ""
			}
		}
		return "no problem with ConfigMap outsider/open"
	})
	if names := moduleNames(u.Bundle); strings.Contains(names, "outsider") {
		e.t.Errorf("a refused namespace's module is in the bundle: %s", names)
	}
	e.waitEvent("outsider", "open", outsider.ResourceVersion, "may not add Rego")
	if err := e.kube.CoreV1().ConfigMaps("outsider").Delete(e.ctx, "open", metav1.DeleteOptions{}); err != nil {
		e.t.Fatal(err)
	}

	cm.Data["guard.rego"] = userDeny("9001")
	if cm, err = cms.Update(e.ctx, cm, metav1.UpdateOptions{}); err != nil {
		e.t.Fatal(err)
	}
	before := u.Bundle.Revision
	u = e.waitFor("the edited module in a new revision", func(u *controller.Update) string {
		if u.Bundle.Revision == before || u.Bundle.Translation.Modules[userModule] != userDeny("9001") {
			return "revision " + u.Bundle.Revision + ", module " + u.Bundle.Translation.Modules[userModule]
		}
		return ""
	})
	engine = e.engineOf(u.Bundle)
	e.decide(engine, 9000, true, "", "")
	e.decide(engine, 9001, false, "tenant/guard", "port 9001 is closed")

	cm.Data["guard.rego"] = "package mesh.policies.tenant.guard\n\ndeny if {\n"
	if cm, err = cms.Update(e.ctx, cm, metav1.UpdateOptions{}); err != nil {
		e.t.Fatal(err)
	}
	good := u.Bundle.Revision
	u = e.waitFor("the broken edit reported", func(u *controller.Update) string {
		for _, p := range u.Problems {
			if p.Kind == "ConfigMap" && p.Namespace == "tenant" && p.Name == "guard" {
				return ""
			}
		}
		return "no problem with ConfigMap tenant/guard"
	})
	if u.Bundle.Revision != good || u.Bundle.Translation.Modules[userModule] != userDeny("9001") {
		e.t.Errorf("the bundle changed with a broken ConfigMap: revision %s, module %q", u.Bundle.Revision, u.Bundle.Translation.Modules[userModule])
	}
	var problem string
	for _, p := range u.Problems {
		if p.Kind == "ConfigMap" {
			problem = p.String()
		}
	}
	if !strings.Contains(problem, "guard.rego:") || !strings.Contains(problem, "stays in force") {
		e.t.Errorf("problem %q: want the parse error and the version kept", problem)
	}
	e.waitEvent("tenant", "guard", cm.ResourceVersion, "guard.rego:")

	// Unlabelled, a ConfigMap's Rego leaves the bundles as if deleted.
	cm.Data["guard.rego"] = userDeny("9002")
	cm.Labels = nil
	if _, err = cms.Update(e.ctx, cm, metav1.UpdateOptions{}); err != nil {
		e.t.Fatal(err)
	}
	e.waitFor("the module gone with its label", func(u *controller.Update) string {
		if _, ok := u.Bundle.Translation.Modules[userModule]; ok {
			return "still there: " + moduleNames(u.Bundle)
		}
		return ""
	})
	cm, err = cms.Get(e.ctx, "guard", metav1.GetOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	cm.Labels = map[string]string{"regomesh.io/rego": "true"}
	if _, err = cms.Update(e.ctx, cm, metav1.UpdateOptions{}); err != nil {
		e.t.Fatal(err)
	}
	e.waitFor("the module back with its label", func(u *controller.Update) string {
		if got := u.Bundle.Translation.Modules[userModule]; got != userDeny("9002") {
			return "module " + userModule + ": " + got
		}
		return ""
	})

	if err := cms.Delete(e.ctx, "guard", metav1.DeleteOptions{}); err != nil {
		e.t.Fatal(err)
	}
	e.waitFor("the module gone with its ConfigMap", func(u *controller.Update) string {
		if _, ok := u.Bundle.Translation.Modules[userModule]; ok {
			return "still there: " + moduleNames(u.Bundle)
		}
		for _, p := range u.Problems {
			if p.Kind == "ConfigMap" {
				return "problem still published: " + p.String()
			}
		}
		return ""
	})
}

// engineOf loads b's archive, as a proxy reads it, into an engine.
func (e *env) engineOf(b *controller.Bundle) *policy.Engine {
	e.t.Helper()
	path := filepath.Join(e.t.TempDir(), "bundle.tar.gz")
	if err := os.WriteFile(path, b.Archive, 0o644); err != nil {
		e.t.Fatal(err)
	}
	pb, err := policy.ReadBundle(path, nil)
	if err != nil {
		e.t.Fatalf("the published bundle does not load: %v", err)
	}
	engine, err := policy.NewEngine(policy.Config{})
	if err != nil {
		e.t.Fatal(err)
	}
	if err := engine.Load(e.ctx, pb); err != nil {
		e.t.Fatalf("the engine refuses the published bundle: %v", err)
	}
	return engine
}

// decide takes an L4 decision on a connection to port of a tenant
// workload.
func (e *env) decide(engine *policy.Engine, port int, allow bool, byPolicy, reason string) {
	e.t.Helper()
	d, err := engine.Decide(e.ctx, policy.Input{
		Layer:       policy.L4,
		Source:      policy.Source{Principal: "spiffe://" + trustDomain + "/ns/tenant/sa/client", IP: "10.9.0.1", Port: 40000},
		Destination: policy.Destination{IP: "10.9.0.2", Port: port, Namespace: "tenant", Workload: "app"},
		Connection:  policy.Connection{MTLS: true},
	})
	if err != nil {
		e.t.Fatal(err)
	}
	if d.Allow != allow || (byPolicy != "" && d.Policy != byPolicy) || (reason != "" && d.Reason != reason) {
		e.t.Errorf("port %d: decision %+v; want allow %v by %q (%q)", port, d.Verdict, allow, byPolicy, reason)
	}
}

// waitEvent waits for the controller's Warning Event on ConfigMap
// namespace/name at resourceVersion, its message holding words.
func (e *env) waitEvent(namespace, name, resourceVersion, words string) {
	e.t.Helper()
	deadline := time.Now().Add(waitTimeout)
	var seen []string
	for time.Now().Before(deadline) {
		list, err := e.kube.CoreV1().Events(namespace).List(e.ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + name})
		if err != nil {
			e.t.Fatal(err)
		}
		seen = seen[:0]
		for _, ev := range list.Items {
			seen = append(seen, ev.Reason+": "+ev.Message)
			if ev.Type == corev1.EventTypeWarning && ev.Reason == "RegoRefused" && ev.InvolvedObject.Kind == "ConfigMap" &&
				ev.InvolvedObject.ResourceVersion == resourceVersion && strings.Contains(ev.Message, words) {
				return
			}
		}
		time.Sleep(100 * time.Millisecond) // no watch for one Event: a short poll
	}
	e.t.Errorf("no RegoRefused Event on ConfigMap %s/%s at %s saying %q; events: %q", namespace, name, resourceVersion, words, seen)
}
