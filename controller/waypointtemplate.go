package controller

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"text/template"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// labelGatewayClassName marks a waypoint's objects with their Gateway's
// class, as istiod's do.
const labelGatewayClassName = "gateway.networking.k8s.io/gateway-class-name"

// WaypointTemplate is the Go template of the objects that make up one
// waypoint, which the controller applies for every Gateway of class
// istio-waypoint. Its actions are between [[ and ]], so that the chart
// can fill in what varies per cluster with Helm's {{ }} first
// (charts/regomesh/templates/waypoint-template.yaml); it sees a
// WaypointGateway. Whatever it says, every object it makes is in the
// Gateway's namespace, owned by the Gateway, and labelled with the
// Gateway's name and class.
type WaypointTemplate struct {
	tmpl *template.Template
}

// WaypointGateway is what a WaypointTemplate sees, named as Istio's
// waypoint template names it.
type WaypointGateway struct {
	// Name, Namespace and UID of the Gateway.
	Name, Namespace, UID string
	// GatewayClass is the Gateway's class: istio-waypoint.
	GatewayClass string
	// DeploymentName names every object of the waypoint; the Gateway's
	// name, as istiod names a waypoint's.
	DeploymentName string
	// ServiceAccount is the waypoint's, hence its SPIFFE ID
	// (spiffe://<trust domain>/ns/<namespace>/sa/<service account>); the
	// Gateway's name, as istiod's.
	ServiceAccount string
}

// waypointKinds are the objects a waypoint template may make, and their
// resources: exactly what the chart's ClusterRole lets the controller
// create and patch.
var waypointKinds = map[schema.GroupVersionKind]string{
	{Version: "v1", Kind: "ServiceAccount"}:                                "serviceaccounts",
	{Version: "v1", Kind: "Service"}:                                       "services",
	{Group: "apps", Version: "v1", Kind: "Deployment"}:                     "deployments",
	{Group: "policy", Version: "v1", Kind: "PodDisruptionBudget"}:          "poddisruptionbudgets",
	{Group: "autoscaling", Version: "v2", Kind: "HorizontalPodAutoscaler"}: "horizontalpodautoscalers",
}

// ParseWaypointTemplate parses text and renders it once for an example
// Gateway, so that a template that cannot make a waypoint is refused
// when the controller starts, not at the first Gateway.
func ParseWaypointTemplate(text string) (*WaypointTemplate, error) {
	tmpl, err := template.New("waypoint").Delims("[[", "]]").Option("missingkey=error").Parse(text)
	if err != nil {
		return nil, fmt.Errorf("controller: waypoint template: %w", err)
	}
	t := &WaypointTemplate{tmpl: tmpl}
	example := &gatewayv1.Gateway{}
	example.Name, example.Namespace, example.UID = "example", "example", "00000000-0000-0000-0000-000000000000"
	example.Spec.GatewayClassName = waypointClass
	objs, err := t.Render(example)
	if err != nil {
		return nil, err
	}
	if !hasKind(objs, "Deployment") || !hasKind(objs, "Service") {
		return nil, errors.New("controller: waypoint template: it makes no Deployment or no Service; a waypoint needs both (charts/README.md#waypoints)")
	}
	return t, nil
}

func hasKind(objs []*unstructured.Unstructured, kind string) bool {
	for _, o := range objs {
		if o.GetKind() == kind {
			return true
		}
	}
	return false
}

// Render makes gw's waypoint objects: the template's, each put in gw's
// namespace, owned by gw and labelled with its name and class.
func (t *WaypointTemplate) Render(gw *gatewayv1.Gateway) ([]*unstructured.Unstructured, error) {
	data := WaypointGateway{
		Name: gw.Name, Namespace: gw.Namespace, UID: string(gw.UID),
		GatewayClass: string(gw.Spec.GatewayClassName), DeploymentName: gw.Name, ServiceAccount: gw.Name,
	}
	var buf bytes.Buffer
	if err := t.tmpl.Execute(&buf, data); err != nil {
		return nil, fmt.Errorf("controller: waypoint template: %w", err)
	}
	dec := utilyaml.NewYAMLOrJSONDecoder(&buf, 4096)
	var out []*unstructured.Unstructured
	for {
		var m map[string]any
		if err := dec.Decode(&m); errors.Is(err, io.EOF) {
			return out, nil
		} else if err != nil {
			return nil, fmt.Errorf("controller: waypoint template: object %d: %w", len(out)+1, err)
		}
		if len(m) == 0 {
			continue // an empty document
		}
		o := &unstructured.Unstructured{Object: m}
		if err := own(o, gw); err != nil {
			return nil, fmt.Errorf("controller: waypoint template: object %d (%s %s): %w", len(out)+1, o.GetKind(), o.GetName(), err)
		}
		out = append(out, o)
	}
}

// own checks o is a kind a waypoint is made of, in gw's namespace (or
// none), and makes gw its owner: Kubernetes' garbage collector deletes it
// with the Gateway.
func own(o *unstructured.Unstructured, gw *gatewayv1.Gateway) error {
	if _, ok := waypointKinds[o.GroupVersionKind()]; !ok {
		return fmt.Errorf("a waypoint is made of ServiceAccount, Deployment, Service, PodDisruptionBudget (policy/v1) and HorizontalPodAutoscaler (autoscaling/v2) only")
	}
	if o.GetName() == "" {
		return errors.New("no metadata.name")
	}
	if ns := o.GetNamespace(); ns != "" && ns != gw.Namespace {
		return fmt.Errorf("namespace %s: a waypoint's objects are in its Gateway's namespace, %s", ns, gw.Namespace)
	}
	o.SetNamespace(gw.Namespace)
	labels := o.GetLabels()
	if labels == nil {
		labels = map[string]string{}
	}
	labels[labelGatewayName] = gw.Name
	labels[labelGatewayClassName] = string(gw.Spec.GatewayClassName)
	o.SetLabels(labels)
	o.SetOwnerReferences([]metav1.OwnerReference{{
		APIVersion: gatewayv1.GroupVersion.String(), Kind: "Gateway", Name: gw.Name, UID: gw.UID,
	}})
	return nil
}
