package worker

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/internal/manager"
	"github.com/subbus/subbus/internal/testenv"
	"github.com/subbus/subbus/messages"
)

// downToy is a toy whose substrate is unreachable until up is set.
type downToy struct {
	*toy
	up       atomic.Bool
	connects atomic.Int64
}

var errSubstrateDown = errors.New("connection refused")

func (d *downToy) Connect(ctx context.Context) error {
	d.connects.Add(1)
	if !d.up.Load() {
		return errSubstrateDown
	}
	return nil
}

func (d *downToy) List(ctx context.Context) ([]drivers.Instance, error) {
	if !d.up.Load() {
		return nil, errSubstrateDown
	}
	return d.toy.List(ctx)
}

func (d *downToy) ErrorCode(err error) drivers.Code {
	if errors.Is(err, errSubstrateDown) {
		return drivers.Unavailable
	}
	return drivers.Internal
}

// A substrate that is down when the worker starts is served once it comes
// up, without restarting the worker (ensure_connected with backoff).
func TestDriverDownAtStartIsReconnected(t *testing.T) {
	oldMin, oldMax := reconnectMin, reconnectMax
	reconnectMin, reconnectMax = 10*time.Millisecond, 50*time.Millisecond
	t.Cleanup(func() { reconnectMin, reconnectMax = oldMin, oldMax })

	d := &downToy{toy: newToy()}
	m := manager.New(d, manager.Options{Host: "h1", CacheTTL: -1, RetryAttempts: 1,
		BreakerFailures: 3, BreakerOpenTimeout: 100 * time.Millisecond, ConnectionTimeout: time.Second})
	s := startNATS(t)
	startWorker(t, s, []*manager.Manager{m}, nil)
	nc := connect(t, s.ClientURL())
	subject := messages.RequestSubject("toy", "h1", messages.OpList)

	r, _ := request(t, nc, subject, nil, nil)
	if r.Error == nil || r.Error.Code != drivers.Unavailable {
		t.Fatalf("list while the substrate is down: %+v, want unavailable", r)
	}
	testenv.Eventually(t, 5*time.Second, func() error {
		if d.connects.Load() < 3 {
			return errors.New("no reconnection attempts yet")
		}
		return nil
	})
	if m.IsConnected() {
		t.Fatal("connected while the substrate is down")
	}

	d.up.Store(true)
	testenv.Eventually(t, 5*time.Second, func() error {
		if !m.IsConnected() {
			return errors.New("not reconnected yet")
		}
		r, _ := request(t, nc, subject, nil, nil)
		if r.Error != nil {
			return errors.New(r.Error.Message)
		}
		return nil
	})
}
