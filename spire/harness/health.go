package harness

import (
	"context"
	"fmt"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/regomesh/regomesh/internal/childproc"
)

// waitHealthy polls gRPC health on the unix socket until it answers
// SERVING, the process exits, or ctx ends.
func waitHealthy(ctx context.Context, p *childproc.Process, socket string) error {
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("harness: %s health: %w", p.Name(), err)
	}
	defer conn.Close()
	health := healthpb.NewHealthClient(conn)
	var last error
	for {
		callCtx, cancel := context.WithTimeout(ctx, time.Second)
		resp, err := health.Check(callCtx, &healthpb.HealthCheckRequest{})
		cancel()
		if err == nil && resp.GetStatus() == healthpb.HealthCheckResponse_SERVING {
			return nil
		}
		if last = err; err == nil {
			last = fmt.Errorf("status %s", resp.GetStatus())
		}
		select {
		case <-p.Done():
			return fmt.Errorf("harness: %s exited (%v) before it was healthy; its log:\n%s", p.Name(), p.Err(), childproc.Tail(p.Logs(), 40))
		case <-ctx.Done():
			return fmt.Errorf("harness: %s not healthy on %s: %w (last check: %w); its log:\n%s",
				p.Name(), socket, ctx.Err(), last, childproc.Tail(p.Logs(), 40))
		case <-time.After(100 * time.Millisecond):
		}
	}
}
