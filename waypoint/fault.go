package waypoint

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"time"

	networkingv1 "istio.io/api/networking/v1"
)

// FaultAbortBody is what a request aborted by a rule's fault receives, as
// Envoy's fault filter answers.
const FaultAbortBody = "fault filter abort"

// faultPolicy is a rule's fault injection: a delay before the request is
// forwarded, and an abort answered in its place, each on a percentage of
// requests, as Envoy's fault filter does for Istio.
type faultPolicy struct {
	delay        time.Duration
	delayPercent float64 // 0 to 100
	abortStatus  int
	abortPercent float64
}

// compileFault reads a VirtualService's fault. A percentage left out
// injects nothing, as Istio says.
func compileFault(f *networkingv1.HTTPFaultInjection) (*faultPolicy, error) {
	fp := &faultPolicy{}
	var err error
	if d := f.GetDelay(); d != nil {
		if d.GetFixedDelay() == nil {
			return nil, errors.New("delay.fixedDelay: required")
		}
		if fp.delay = d.GetFixedDelay().AsDuration(); fp.delay <= 0 {
			return nil, errors.New("delay.fixedDelay: must be positive")
		}
		if fp.delayPercent, err = percent(d.GetPercentage()); err != nil {
			return nil, fmt.Errorf("delay.percentage: %w", err)
		}
	}
	if a := f.GetAbort(); a != nil {
		if fp.abortStatus = int(a.GetHttpStatus()); fp.abortStatus < 200 || fp.abortStatus > 599 {
			return nil, fmt.Errorf("abort.httpStatus: %d is not an HTTP status from 200 to 599", fp.abortStatus)
		}
		if fp.abortPercent, err = percent(a.GetPercentage()); err != nil {
			return nil, fmt.Errorf("abort.percentage: %w", err)
		}
	}
	return fp, nil
}

func percent(p *networkingv1.Percent) (float64, error) {
	v := p.GetValue()
	if v < 0 || v > 100 {
		return 0, fmt.Errorf("%g is not between 0 and 100", v)
	}
	return v, nil
}

// hit draws whether a request is among percent of them.
func hit(percent float64) bool { return percent > 0 && rand.Float64()*100 < percent }

// injectFault applies the rule's fault to a request before it is
// forwarded: it may wait (flag DI), then answer the request itself (flag
// FI), in which case it returns false. A client that leaves during the
// delay ends the request there.
func (w *Waypoint) injectFault(rw http.ResponseWriter, r *http.Request, x *exchange) bool {
	if x.rule == nil || x.rule.fault == nil {
		return true
	}
	f := x.rule.fault
	if hit(f.delayPercent) {
		x.addFlag(FlagDelayInjected)
		if err := sleep(r.Context(), f.delay); err != nil {
			x.fail(FlagDownstreamClosed, fmt.Errorf("waypoint: the client left during the fault delay of %s: %w", x.rule.name(), err))
			return false
		}
	}
	if hit(f.abortPercent) {
		x.addFlag(FlagFaultInjected)
		respond(rw, x.grpc, f.abortStatus, grpcCodeOf(f.abortStatus), FaultAbortBody)
		return false
	}
	return true
}

// grpcCodeOf maps an HTTP status to the gRPC code Envoy answers gRPC
// requests with in its place.
func grpcCodeOf(status int) int {
	switch status {
	case 400:
		return grpcInternal
	case 401:
		return grpcUnauthenticated
	case 403:
		return grpcPermissionDenied
	case 404:
		return grpcUnimplemented
	case 429, 502, 503, 504:
		return grpcUnavailable
	}
	return 2 // UNKNOWN
}
