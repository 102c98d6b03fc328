package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"time"

	"fortio.org/fortio/fhttp"
	"fortio.org/fortio/periodic"
	"fortio.org/log"

	"github.com/regomesh/regomesh/localmesh/netbed"
)

// load is one fortio run: HTTP/1.1 GETs of url over conns kept-alive
// connections (fortio's own client, one connection per thread) at qps
// requests per second in all (0: as fast as they answer) for duration.
type load struct {
	URL      string        `json:"url"`
	QPS      float64       `json:"qps"`
	Conns    int           `json:"conns"`
	Duration time.Duration `json:"duration"`
}

// loadResult is what a run measured; latencies in seconds, from fortio's
// histogram (10 µs resolution). fortio schedules each request at its
// time and measures from there, so a stalled answer delays no sample
// (no coordinated omission).
type loadResult struct {
	Requests  int64   `json:"requests"`
	ActualQPS float64 `json:"actual_qps"`
	// Failed counts answers other than 200 and socket errors.
	Failed int64   `json:"failed"`
	P50    float64 `json:"p50"`
	P90    float64 `json:"p90"`
	P99    float64 `json:"p99"`
}

// runLoad runs l from inside pod: the bench starts itself there with
// -loadgen (a process's sockets are in the namespace it starts in, and
// fortio's connections come from goroutines of its own), and reads the
// result from its stdout.
func runLoad(ctx context.Context, pod *netbed.Pod, l load) (loadResult, error) {
	self, err := os.Executable()
	if err != nil {
		return loadResult{}, err
	}
	spec, err := json.Marshal(l)
	if err != nil {
		return loadResult{}, err
	}
	var out, errOut bytes.Buffer
	cmd := exec.Command(self, "-loadgen", string(spec))
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := pod.Start(cmd); err != nil {
		return loadResult{}, fmt.Errorf("bench: load generator in %s: %w", pod.Name, err)
	}
	stop := context.AfterFunc(ctx, func() { cmd.Process.Kill() })
	defer stop()
	if err := cmd.Wait(); err != nil {
		return loadResult{}, fmt.Errorf("bench: load generator in %s (%s): %w\n%s", pod.Name, spec, err, tail(errOut.Bytes()))
	}
	var r loadResult
	if err := json.Unmarshal(out.Bytes(), &r); err != nil {
		return r, fmt.Errorf("bench: load generator output %q: %w", out.String(), err)
	}
	if r.Requests == 0 {
		return r, fmt.Errorf("bench: load generator in %s (%s): no request made\n%s", pod.Name, spec, tail(errOut.Bytes()))
	}
	return r, nil
}

// loadgenMain is the -loadgen process: it runs the load its argument
// describes (a load as JSON) with fortio and prints a loadResult.
func loadgenMain(spec string, stdout io.Writer) error {
	var l load
	if err := json.Unmarshal([]byte(spec), &l); err != nil {
		return fmt.Errorf("-loadgen: %w", err)
	}
	log.SetLogLevelQuiet(log.Warning)
	qps := l.QPS
	if qps == 0 {
		qps = -1 // fortio: no pacing
	}
	o := &fhttp.HTTPRunnerOptions{
		RunnerOptions: periodic.RunnerOptions{
			QPS: qps, Duration: l.Duration, NumThreads: l.Conns,
			Percentiles: []float64{50, 90, 99}, Resolution: 10e-6, Out: io.Discard,
		},
		HTTPOptions: fhttp.HTTPOptions{URL: l.URL},
	}
	res, err := fhttp.RunHTTPTest(o)
	if err != nil {
		return fmt.Errorf("-loadgen: fortio: %w", err)
	}
	h := res.DurationHistogram
	r := loadResult{Requests: h.Count, ActualQPS: res.ActualQPS, Failed: h.Count - res.RetCodes[200]}
	pct := map[float64]*float64{50: &r.P50, 90: &r.P90, 99: &r.P99}
	for _, p := range h.Percentiles {
		if dst := pct[p.Percentile]; dst != nil {
			*dst = p.Value
		}
	}
	if r.P99 == 0 {
		return errors.New("-loadgen: fortio reported no percentiles")
	}
	return json.NewEncoder(stdout).Encode(r)
}
