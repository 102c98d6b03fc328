package cni

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
)

func env(vars map[string]string) func(string) string {
	return func(k string) string { return vars[k] }
}

func TestPluginAddCheckDel(t *testing.T) {
	c, h := serve(t)
	netns := t.TempDir()
	conf := `{"cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "regomesh-cni", "ztunnelSocket": "` + c.Socket + `",
		"prevResult": {"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.7/24"}]}}`
	vars := map[string]string{
		"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": netns,
		"CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-1;K8S_POD_UID=uid-1",
	}
	var out bytes.Buffer
	if code := RunPlugin(context.Background(), env(vars), strings.NewReader(conf), &out); code != 0 {
		t.Fatalf("ADD exit %d: %s", code, out.String())
	}
	var result map[string]any
	if err := json.Unmarshal(out.Bytes(), &result); err != nil || result["ips"] == nil {
		t.Errorf("ADD must pass prevResult on: %s", out.String())
	}
	pods := h.Pods()
	if len(pods) != 1 || pods[0].UID != "uid-1" || pods[0].Namespace != "shop" || pods[0].IPs[0] != "10.0.0.7" || pods[0].Netns != netns {
		t.Fatalf("enrolled %+v", pods)
	}
	vars["CNI_COMMAND"] = "CHECK"
	if code := RunPlugin(context.Background(), env(vars), strings.NewReader(conf), &out); code != 0 {
		t.Errorf("CHECK exit %d", code)
	}
	vars["CNI_COMMAND"] = "DEL"
	if code := RunPlugin(context.Background(), env(vars), strings.NewReader(conf), &out); code != 0 {
		t.Errorf("DEL exit %d", code)
	}
	if len(h.Pods()) != 0 {
		t.Errorf("pod still enrolled after DEL")
	}
	vars["CNI_COMMAND"] = "CHECK"
	out.Reset()
	if code := RunPlugin(context.Background(), env(vars), strings.NewReader(conf), &out); code != 1 || !strings.Contains(out.String(), "not enrolled") {
		t.Errorf("CHECK after DEL: exit %d, %s", code, out.String())
	}
}

func TestPluginErrors(t *testing.T) {
	var out bytes.Buffer
	code := RunPlugin(context.Background(), env(map[string]string{"CNI_COMMAND": "ADD", "CNI_NETNS": "/x", "CNI_ARGS": "K8S_POD_UID=u;K8S_POD_NAME=a;K8S_POD_NAMESPACE=b"}),
		strings.NewReader(`{"cniVersion": "1.0.0", "ztunnelSocket": "/nonexistent/z.sock"}`), &out)
	var perr pluginError
	if code != 1 || json.Unmarshal(out.Bytes(), &perr) != nil || perr.Code != 999 || !strings.Contains(perr.Msg, "is ztunnel running") {
		t.Errorf("exit %d, %s", code, out.String())
	}
	out.Reset()
	if code := RunPlugin(context.Background(), env(map[string]string{"CNI_COMMAND": "VERSION"}), strings.NewReader(""), &out); code != 0 || !strings.Contains(out.String(), "1.1.0") {
		t.Errorf("VERSION: exit %d, %s", code, out.String())
	}
}
