package localmesh

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/regomesh/regomesh/localmesh/netbed"
	"github.com/regomesh/regomesh/spire"
	"github.com/regomesh/regomesh/ztunnel/cni"
	wire "github.com/regomesh/regomesh/ztunnel/state/xds"
)

// Istio's ambient enrolment label and its values (the controller reads
// them on namespaces and pods).
const (
	labelDataplaneMode = "istio.io/dataplane-mode"
	modeAmbient        = "ambient"
	modeNone           = "none"
)

// startKubernetes makes the waypoints' Gateways, the pods' objects and
// Config.Services' in the API server and starts the control plane,
// before any proxy: a ztunnel or waypoint streaming from the controller
// is ready once it has the first state.
func (m *Mesh) startKubernetes(ctx context.Context) error {
	var err error
	if m.Kube, err = kubernetes.NewForConfig(m.cfg.Kubernetes); err != nil {
		return fmt.Errorf("localmesh: kubernetes client: %w", err)
	}
	if err := m.createGateways(ctx); err != nil {
		return err
	}
	for _, p := range m.cfg.Pods {
		if err := m.createPodObject(ctx, p, m.Pods[p.Name]); err != nil {
			return err
		}
	}
	if err := m.createServices(ctx); err != nil {
		return err
	}
	return m.startControlPlane(ctx)
}

// controllerFlags are a ztunnel process's flags for the control plane:
// the stream, the bundles (signed: --verification-key) and its own SVID
// from the node agent's Workload API.
func (m *Mesh) controllerFlags(node string) []string {
	cp := m.ControlPlane
	return []string{
		"--controller", cp.StreamAddr, "--controller-bundles", cp.BundleURL, "--verification-key", cp.VerificationKey,
		"--spire-workload-socket", m.agents[node].WorkloadSocket(), "--controller-timeout", "60s",
	}
}

// createPodObject does what the node's kubelet and the scheduler do for
// pod p, whose namespace is pod: a Pod bound to its node, then its status
// (running, ready, podIP the namespace's address). Its namespace is made
// if missing, enrolled (istio.io/dataplane-mode=ambient) when a pod of it
// is; a pod outside the mesh in an enrolled namespace opts out (=none).
// A waypoint pod carries its Gateway's name (createGateways).
func (m *Mesh) createPodObject(ctx context.Context, p PodSpec, pod *netbed.Pod) error {
	ambient := m.namespaceEnrolled(p)
	if err := m.createNamespace(ctx, p.Namespace, ambient); err != nil {
		return err
	}
	labels := map[string]string{"app": p.Name}
	if !p.enrolled() && ambient {
		labels[labelDataplaneMode] = modeNone
	}
	if p.Waypoint {
		labels[labelGatewayName] = p.Name
	}
	obj, err := m.Kube.CoreV1().Pods(p.Namespace).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: p.Name, Labels: labels},
		Spec: corev1.PodSpec{NodeName: p.Node, ServiceAccountName: p.ServiceAccount,
			Containers: []corev1.Container{{Name: "app", Image: "example.invalid/" + p.Name}}},
	}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("localmesh: create pod %s/%s: %w", p.Namespace, p.Name, err)
	}
	ip := pod.IP.String()
	obj.Status = corev1.PodStatus{
		Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}, HostIP: pod.Node.IP.String(),
		Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}},
	}
	if _, err := m.Kube.CoreV1().Pods(p.Namespace).UpdateStatus(ctx, obj, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("localmesh: pod %s/%s status: %w", p.Namespace, p.Name, err)
	}
	return nil
}

// namespaceEnrolled says whether p's namespace is in the ambient mesh: a
// pod of it (in Config or p itself) is enrolled.
func (m *Mesh) namespaceEnrolled(p PodSpec) bool {
	return p.enrolled() || slices.ContainsFunc(m.cfg.Pods, func(o PodSpec) bool { return o.Namespace == p.Namespace && o.enrolled() })
}

// createNamespace makes namespace name, enrolled when ambient; one that
// exists (its policies applied first, say) is enrolled by a label added.
func (m *Mesh) createNamespace(ctx context.Context, name string, ambient bool) error {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if ambient {
		ns.Labels = map[string]string{labelDataplaneMode: modeAmbient}
	}
	_, err := m.Kube.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) && ambient {
		patch := fmt.Sprintf(`{"metadata":{"labels":{%q:%q}}}`, labelDataplaneMode, modeAmbient)
		_, err = m.Kube.CoreV1().Namespaces().Patch(ctx, name, types.MergePatchType, []byte(patch), metav1.PatchOptions{})
	}
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("localmesh: namespace %s: %w", name, err)
	}
	return nil
}

// waitStreamed waits until every ztunnel process holds its own node's
// enrolled pods in the state the controller streamed: before that, it
// would refuse to enrol them.
func (m *Mesh) waitStreamed(ctx context.Context) error {
	for node, p := range m.Processes {
		var want []string
		for _, pod := range m.cfg.Pods {
			if pod.Node == node && pod.enrolled() {
				want = append(want, pod.Namespace+"/"+pod.Name)
			}
		}
		if err := p.WaitWorkloads(ctx, want...); err != nil {
			return err
		}
	}
	return nil
}

// WaitWorkloads polls the config dump until the state the process holds
// has a workload for every one of names ("<namespace>/<name>").
func (p *ZtunnelProcess) WaitWorkloads(ctx context.Context, names ...string) error {
	return p.poll(ctx, fmt.Sprintf("holding workloads %v", names), func() error {
		dump, err := p.ConfigDump(ctx)
		if err != nil {
			return err
		}
		for _, name := range names {
			if !slices.ContainsFunc(dump.Workloads, func(w DumpWorkload) bool { return w.Namespace+"/"+w.Name == name }) {
				return fmt.Errorf("no workload %s in the config dump", name)
			}
		}
		return nil
	})
}

// WaitPolicyRevision polls the config dump until the process's policy
// engine holds revision rev of the controller's mesh bundle.
func (p *ZtunnelProcess) WaitPolicyRevision(ctx context.Context, rev string) error {
	return p.poll(ctx, "holding bundle revision "+rev, func() error {
		dump, err := p.ConfigDump(ctx)
		if err != nil {
			return err
		}
		if got := dump.Policy.Revisions[meshBundleRoot]; got != rev {
			return fmt.Errorf("mesh bundle revision %q", got)
		}
		return nil
	})
}

// meshBundleRoot is the name the config dump gives the controller's mesh
// bundle (wire.MeshBundle without its bundles/ prefix).
var meshBundleRoot = wire.MeshBundle[len("bundles/"):]

// ConfigDump is what a ztunnel process's /config_dump says of its state
// and policy.
type ConfigDump struct {
	Workloads []DumpWorkload `json:"workloads"`
	Policy    struct {
		Generation uint64            `json:"generation"`
		Revisions  map[string]string `json:"revisions"`
	} `json:"policy"`
}

// DumpWorkload is a workload of the config dump.
type DumpWorkload struct {
	Name      string `json:"name"`
	Namespace string `json:"namespace"`
	Node      string `json:"node"`
}

// ConfigDump fetches the process's config dump.
func (p *ZtunnelProcess) ConfigDump(ctx context.Context) (ConfigDump, error) {
	var dump ConfigDump
	status, body, err := p.Get(ctx, AdminPort, "/config_dump")
	if err != nil {
		return dump, err
	}
	if status != http.StatusOK {
		return dump, fmt.Errorf("localmesh: config dump: %d %s", status, body)
	}
	if err := json.Unmarshal(body, &dump); err != nil {
		return dump, fmt.Errorf("localmesh: config dump: %w", err)
	}
	return dump, nil
}

// AddPod adds a pod to a running mesh driven by Kubernetes, as a pod is
// scheduled: its namespace on its node, its SPIRE entry, its Pod object
// with its status, then, once its node's ztunnel has it in the streamed
// state, its enrolment through the CNI socket, as regomesh-cni enrols it;
// it returns once the ztunnel holds its SVID.
func (m *Mesh) AddPod(ctx context.Context, spec PodSpec) (*netbed.Pod, error) {
	if m.Kube == nil {
		return nil, fmt.Errorf("localmesh: AddPod needs Config.Kubernetes")
	}
	proc := m.Processes[spec.Node]
	if proc == nil || spec.Waypoint {
		return nil, fmt.Errorf("localmesh: pod %s: no ztunnel process on node %q, or a waypoint", spec.Name, spec.Node)
	}
	if _, exists := m.Pods[spec.Name]; exists {
		return nil, fmt.Errorf("localmesh: pod %s exists", spec.Name)
	}
	pod, err := proc.Node.AddPod(spec.Name)
	if err != nil {
		return nil, err
	}
	m.Pods[spec.Name] = pod
	m.cfg.Pods = append(m.cfg.Pods, spec)
	if spec.enrolled() && !spec.NoEntry {
		reg, err := spire.KubernetesRegistration(m.TrustDomain, spec.Namespace, spec.ServiceAccount, m.agents[spec.Node].ID())
		if err != nil {
			return nil, err
		}
		reg.X509SVIDTTL = m.cfg.SVIDTTL
		if _, _, err := m.server.Registrar().Apply(ctx, reg); err != nil {
			return nil, err
		}
	}
	if err := m.createPodObject(ctx, spec, pod); err != nil {
		return nil, err
	}
	if !spec.enrolled() {
		return pod, nil
	}
	if err := proc.WaitWorkloads(ctx, spec.Namespace+"/"+spec.Name); err != nil {
		return nil, err
	}
	info := cni.Pod{UID: spec.Name, Name: spec.Name, Namespace: spec.Namespace, Netns: pod.Path, IPs: []string{pod.IP.String()}}
	if err := (&cni.Client{Socket: proc.CNISocket}).Add(ctx, info); err != nil {
		return nil, fmt.Errorf("localmesh: enrol %s: %w", spec.Name, err)
	}
	if spec.NoEntry {
		return pod, nil
	}
	return pod, proc.waitSVIDs(ctx, []string{m.Identity(spec).String()})
}
