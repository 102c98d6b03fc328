package istiometrics_test

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/regomesh/regomesh/internal/istiometrics"
)

// TestTCP: an opened, a closed connection with its bytes, the series
// under Istio's names with the labels given, and a nil TCP counting
// nothing.
func TestTCP(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	tcp := istiometrics.NewTCP(reg, []string{"reporter", "response_flags"})
	a := []string{"source", "-"}
	tcp.Opened(a)
	tcp.Opened(a)
	tcp.Closed(a, 10, 3)
	tcp.Opened([]string{"source", "DENY"})
	want := `
# HELP istio_tcp_connections_closed_total TCP connections closed.
# TYPE istio_tcp_connections_closed_total counter
istio_tcp_connections_closed_total{reporter="source",response_flags="-"} 1
# HELP istio_tcp_connections_opened_total TCP connections opened (a refused one with its response flag).
# TYPE istio_tcp_connections_opened_total counter
istio_tcp_connections_opened_total{reporter="source",response_flags="-"} 2
istio_tcp_connections_opened_total{reporter="source",response_flags="DENY"} 1
# HELP istio_tcp_received_bytes_total Bytes received from the client, counted when the connection ends.
# TYPE istio_tcp_received_bytes_total counter
istio_tcp_received_bytes_total{reporter="source",response_flags="-"} 3
# HELP istio_tcp_sent_bytes_total Bytes sent to the client (the connection's downstream), counted when the connection ends.
# TYPE istio_tcp_sent_bytes_total counter
istio_tcp_sent_bytes_total{reporter="source",response_flags="-"} 10
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want)); err != nil {
		t.Error(err)
	}
	var none *istiometrics.TCP
	none.Opened(a)
	none.Closed(a, 1, 1)
	if got := istiometrics.OrUnknown(""); got != "unknown" {
		t.Errorf(`OrUnknown("") = %q`, got)
	}
	if got := istiometrics.OrUnknown("web"); got != "web" {
		t.Errorf(`OrUnknown("web") = %q`, got)
	}
}
