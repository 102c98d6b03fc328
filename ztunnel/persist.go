package ztunnel

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/regomesh/regomesh/ztunnel/cni"
)

// savePods records the enrolled pods in Config.PodsFile, so a restarted
// ztunnel re-opens their listeners (their capture rules stay in place
// across the restart). The file is replaced atomically. Callers hold z.mu.
func (z *Ztunnel) savePods() {
	if z.cfg.PodsFile == "" {
		return
	}
	pods := make([]cni.Pod, 0, len(z.pods))
	for _, p := range z.pods {
		pods = append(pods, p.info)
	}
	slices.SortFunc(pods, func(a, b cni.Pod) int { return strings.Compare(a.UID, b.UID) })
	if err := writeAtomic(z.cfg.PodsFile, pods); err != nil {
		z.log.Error("cannot record enrolled pods; a restart will not restore them", "file", z.cfg.PodsFile, "error", err)
	}
}

func writeAtomic(path string, v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o640); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// RestorePods enrols again the pods recorded in Config.PodsFile by the
// previous run, as after a ztunnel restart. A pod that cannot be restored
// (its namespace is gone, say) is skipped and reported; the others are
// restored.
func (z *Ztunnel) RestorePods(ctx context.Context) (int, error) {
	if z.cfg.PodsFile == "" {
		return 0, nil
	}
	data, err := os.ReadFile(z.cfg.PodsFile)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("ztunnel: restore pods: %w", err)
	}
	var pods []cni.Pod
	if err := json.Unmarshal(data, &pods); err != nil {
		return 0, fmt.Errorf("ztunnel: restore pods from %s: %w", z.cfg.PodsFile, err)
	}
	var errs []error
	restored := 0
	for _, p := range pods {
		if err := z.AddPod(ctx, p); err != nil {
			errs = append(errs, fmt.Errorf("pod %s/%s: %w", p.Namespace, p.Name, err))
			continue
		}
		restored++
	}
	return restored, errors.Join(errs...)
}
