package cni

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"strings"
)

// SupportedVersions are the CNI spec versions the plugin speaks.
var SupportedVersions = []string{"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"}

// netConf is the plugin's configuration from the CNI config list; it runs
// chained after the pod network plugin, whose result is prevResult.
type netConf struct {
	CNIVersion    string          `json:"cniVersion"`
	Name          string          `json:"name"`
	Type          string          `json:"type"`
	ZtunnelSocket string          `json:"ztunnelSocket"`
	PrevResult    json.RawMessage `json:"prevResult"`
}

type prevResult struct {
	IPs []struct {
		Address string `json:"address"`
	} `json:"ips"`
}

// pluginError is the CNI error result.
type pluginError struct {
	CNIVersion string `json:"cniVersion"`
	Code       int    `json:"code"`
	Msg        string `json:"msg"`
	Details    string `json:"details,omitempty"`
}

// RunPlugin is regomesh-cni: it reads the CNI environment (getenv) and the
// network configuration (stdin), tells ztunnel, and writes the result to
// stdout. It returns the process exit status.
func RunPlugin(ctx context.Context, getenv func(string) string, stdin io.Reader, stdout io.Writer) int {
	raw, err := io.ReadAll(stdin)
	if err != nil {
		return fail(stdout, "", fmt.Errorf("read network configuration: %w", err))
	}
	var conf netConf
	if cmd := getenv("CNI_COMMAND"); cmd != "VERSION" {
		if err := json.Unmarshal(raw, &conf); err != nil {
			return fail(stdout, "", fmt.Errorf("network configuration: %w", err))
		}
	}
	client := &Client{Socket: conf.ZtunnelSocket}
	switch cmd := getenv("CNI_COMMAND"); cmd {
	case "ADD":
		return add(ctx, client, conf, getenv, stdout)
	case "DEL":
		if err := client.Delete(ctx, podUID(getenv)); err != nil {
			return fail(stdout, conf.CNIVersion, err)
		}
		return 0
	case "CHECK":
		return check(ctx, client, conf, getenv, stdout)
	case "VERSION":
		json.NewEncoder(stdout).Encode(map[string]any{"cniVersion": "1.1.0", "supportedVersions": SupportedVersions})
		return 0
	default:
		return fail(stdout, conf.CNIVersion, fmt.Errorf("unknown CNI_COMMAND %q", cmd))
	}
}

func add(ctx context.Context, client *Client, conf netConf, getenv func(string) string, stdout io.Writer) int {
	args := cniArgs(getenv("CNI_ARGS"))
	pod := Pod{
		UID: podUID(getenv), Name: args["K8S_POD_NAME"], Namespace: args["K8S_POD_NAMESPACE"],
		ServiceAccount: args["K8S_POD_SERVICE_ACCOUNT"], Netns: getenv("CNI_NETNS"),
	}
	var prev prevResult
	if len(conf.PrevResult) > 0 {
		if err := json.Unmarshal(conf.PrevResult, &prev); err != nil {
			return fail(stdout, conf.CNIVersion, fmt.Errorf("prevResult: %w", err))
		}
	}
	for _, ip := range prev.IPs {
		if p, err := netip.ParsePrefix(ip.Address); err == nil {
			pod.IPs = append(pod.IPs, p.Addr().String())
		}
	}
	if err := client.Add(ctx, pod); err != nil {
		return fail(stdout, conf.CNIVersion, err)
	}
	result := conf.PrevResult // a chained plugin passes the result on
	if len(result) == 0 {
		result = json.RawMessage(fmt.Sprintf(`{"cniVersion": %q}`, conf.CNIVersion))
	}
	stdout.Write(result)
	return 0
}

func check(ctx context.Context, client *Client, conf netConf, getenv func(string) string, stdout io.Writer) int {
	pods, err := client.Snapshot(ctx)
	if err != nil {
		return fail(stdout, conf.CNIVersion, err)
	}
	uid := podUID(getenv)
	for _, p := range pods {
		if p.UID == uid {
			return 0
		}
	}
	return fail(stdout, conf.CNIVersion, fmt.Errorf("pod %s is not enrolled in ztunnel", uid))
}

// podUID is K8S_POD_UID, or the container ID outside Kubernetes.
func podUID(getenv func(string) string) string {
	if uid := cniArgs(getenv("CNI_ARGS"))["K8S_POD_UID"]; uid != "" {
		return uid
	}
	return getenv("CNI_CONTAINERID")
}

// cniArgs parses CNI_ARGS ("K1=V1;K2=V2").
func cniArgs(s string) map[string]string {
	out := map[string]string{}
	for _, kv := range strings.Split(s, ";") {
		if k, v, ok := strings.Cut(kv, "="); ok {
			out[k] = v
		}
	}
	return out
}

func fail(stdout io.Writer, version string, err error) int {
	if version == "" {
		version = "1.0.0"
	}
	json.NewEncoder(stdout).Encode(pluginError{CNIVersion: version, Code: 999, Msg: "regomesh-cni: " + err.Error()})
	return 1
}
