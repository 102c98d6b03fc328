package kubeharness

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
)

// A crdSource is a module whose manifests hold CRDs the controller watches,
// and which of them to install. The manifests are read from the module's
// directory in the module cache, at the version the main go.mod pins: the
// same version whose typed clients the code compiles against.
type crdSource struct {
	module string
	files  []string // relative to the module's root
	groups []string // install only CRDs of these groups; none: every CRD in files
}

var crdSources = []crdSource{
	{
		module: "istio.io/api",
		files:  []string{"kubernetes/customresourcedefinitions.gen.yaml"},
		groups: []string{"security.istio.io"}, // AuthorizationPolicy, PeerAuthentication, RequestAuthentication
	},
	{
		module: "sigs.k8s.io/gateway-api",
		files: []string{
			"config/crd/standard/gateway.networking.k8s.io_gatewayclasses.yaml",
			"config/crd/standard/gateway.networking.k8s.io_gateways.yaml",
			"config/crd/standard/gateway.networking.k8s.io_httproutes.yaml",
		},
	},
}

var crdResource = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// installCRDs creates the CRDs of crdSources and waits until each is
// Established and its resource is in discovery.
func installCRDs(ctx context.Context, config *rest.Config) error {
	crds, err := readCRDs()
	if err != nil {
		return err
	}
	client, err := dynamic.NewForConfig(config)
	if err != nil {
		return fmt.Errorf("kubeharness: install CRDs: %w", err)
	}
	for _, crd := range crds {
		if _, err := client.Resource(crdResource).Create(ctx, crd, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("kubeharness: create CRD %s: %w", crd.GetName(), err)
		}
	}
	disco, err := discovery.NewDiscoveryClientForConfig(config)
	if err != nil {
		return fmt.Errorf("kubeharness: install CRDs: %w", err)
	}
	for _, crd := range crds {
		if err := waitServed(ctx, client, disco, crd); err != nil {
			return err
		}
	}
	return nil
}

// waitServed polls until crd is Established and its served versions list
// its plural in discovery.
func waitServed(ctx context.Context, client dynamic.Interface, disco discovery.DiscoveryInterface, crd *unstructured.Unstructured) error {
	group, _, _ := unstructured.NestedString(crd.Object, "spec", "group")
	plural, _, _ := unstructured.NestedString(crd.Object, "spec", "names", "plural")
	var last error
	for {
		if last = served(ctx, client, disco, crd.GetName(), group, plural); last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("kubeharness: CRD %s not served: %w (last check: %w)", crd.GetName(), ctx.Err(), last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func served(ctx context.Context, client dynamic.Interface, disco discovery.DiscoveryInterface, name, group, plural string) error {
	got, err := client.Resource(crdResource).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	if !established(got) {
		return errors.New("not Established")
	}
	versions, _, _ := unstructured.NestedSlice(got.Object, "spec", "versions")
	for _, v := range versions {
		version, _ := v.(map[string]any)
		if servedVersion, _ := version["served"].(bool); !servedVersion {
			continue
		}
		gv := group + "/" + fmt.Sprint(version["name"])
		list, err := disco.ServerResourcesForGroupVersion(gv)
		if err != nil {
			return fmt.Errorf("discovery of %s: %w", gv, err)
		}
		if !slices.ContainsFunc(list.APIResources, func(r metav1.APIResource) bool { return r.Name == plural }) {
			return fmt.Errorf("%s not yet in discovery of %s", plural, gv)
		}
	}
	return nil
}

func established(crd *unstructured.Unstructured) bool {
	conditions, _, _ := unstructured.NestedSlice(crd.Object, "status", "conditions")
	for _, c := range conditions {
		cond, _ := c.(map[string]any)
		if cond["type"] == "Established" && cond["status"] == "True" {
			return true
		}
	}
	return false
}

// readCRDs reads the CRDs of crdSources from the module cache.
func readCRDs() ([]*unstructured.Unstructured, error) {
	dirs, err := moduleDirs()
	if err != nil {
		return nil, err
	}
	var crds []*unstructured.Unstructured
	for _, src := range crdSources {
		for _, file := range src.files {
			path := filepath.Join(dirs[src.module], file)
			docs, err := readManifest(path)
			if err != nil {
				return nil, err
			}
			for _, doc := range docs {
				group, _, _ := unstructured.NestedString(doc.Object, "spec", "group")
				if doc.GetKind() == "CustomResourceDefinition" && (len(src.groups) == 0 || slices.Contains(src.groups, group)) {
					crds = append(crds, doc)
				}
			}
		}
	}
	return crds, nil
}

// readManifest decodes every document of a multi-document YAML file.
func readManifest(path string) ([]*unstructured.Unstructured, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("kubeharness: CRD manifest: %w", err)
	}
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	var docs []*unstructured.Unstructured
	for {
		var obj map[string]any
		if err := dec.Decode(&obj); errors.Is(err, io.EOF) {
			return docs, nil
		} else if err != nil {
			return nil, fmt.Errorf("kubeharness: CRD manifest %s: %w", path, err)
		}
		if obj != nil {
			docs = append(docs, &unstructured.Unstructured{Object: obj})
		}
	}
}

// moduleDirs asks the go command where the crdSources modules are, at the
// versions regomesh's go.mod pins, downloading them if need be.
func moduleDirs() (map[string]string, error) {
	root, err := moduleRoot()
	if err != nil {
		return nil, fmt.Errorf("kubeharness: the CRDs come from the regomesh module's dependencies: %w", err)
	}
	args := []string{"mod", "download", "-json"}
	for _, src := range crdSources {
		args = append(args, src.module)
	}
	cmd := exec.Command("go", args...)
	cmd.Dir = root
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("kubeharness: locate the CRD modules (go %v in %s): %w: %s", args, root, err, stderr.Bytes())
	}
	dirs := map[string]string{}
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var m struct{ Path, Dir, Error string }
		if err := dec.Decode(&m); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return nil, fmt.Errorf("kubeharness: locate the CRD modules: %w", err)
		}
		if m.Error != "" || m.Dir == "" {
			return nil, fmt.Errorf("kubeharness: locate the CRD module %s: %s", m.Path, m.Error)
		}
		dirs[m.Path] = m.Dir
	}
	for _, src := range crdSources {
		if dirs[src.module] == "" {
			return nil, fmt.Errorf("kubeharness: go mod download named no directory for %s", src.module)
		}
	}
	return dirs, nil
}
