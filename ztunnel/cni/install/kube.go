package install

import (
	"context"
	"fmt"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// DaemonSetGone tells an uninstall from a restart by the installer's own
// DaemonSet: gone, or being deleted, is an uninstall. Helm deletes it on
// `helm uninstall`; a rolling update or a node drain leaves it.
func DaemonSetGone(kube kubernetes.Interface, namespace, name string) func(context.Context) (bool, error) {
	return func(ctx context.Context) (bool, error) {
		ds, err := kube.AppsV1().DaemonSets(namespace).Get(ctx, name, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			return true, nil
		case err != nil:
			return false, fmt.Errorf("install: read DaemonSet %s/%s: %w", namespace, name, err)
		}
		return ds.DeletionTimestamp != nil, nil
	}
}
