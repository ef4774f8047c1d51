package manager

import (
	"context"
	"errors"
	"testing"

	"github.com/subbus/subbus/internal/drivers"
)

// batchDriver adds a bulk sampler to the scriptable driver.
type batchDriver struct {
	*scriptDriver
	batches int
	fail    error
}

func (d *batchDriver) MetricsBatch(ctx context.Context, names []string) (map[string]drivers.ResourceUsage, map[string]error, error) {
	d.batches++
	if d.fail != nil {
		return nil, nil, d.fail
	}
	s := map[string]drivers.ResourceUsage{}
	f := map[string]error{}
	for _, n := range names {
		if n == "gone" {
			f[n] = errors.New("raw: no such container")
			continue
		}
		s[n] = drivers.ResourceUsage{CPUPercent: 2, Measured: drivers.MeasureCPU}
	}
	return s, f, nil
}

func TestMetricsBatch(t *testing.T) {
	names := []string{"a", "b", "gone", "../bad"}

	t.Run("fallback samples each instance", func(t *testing.T) {
		d := newScriptDriver("fake")
		h := newHarness(t, d, Options{})
		samples, failed, err := h.m.MetricsBatch(context.Background(), names[:3])
		if err != nil {
			t.Fatal(err)
		}
		if len(samples) != 3 || len(failed) != 0 || d.calls["metrics"] != 3 {
			t.Fatalf("samples %v failed %v calls %d", samples, failed, d.calls["metrics"])
		}
	})

	t.Run("driver batch is one call, per-name errors classified", func(t *testing.T) {
		d := &batchDriver{scriptDriver: newScriptDriver("fake")}
		h := newHarness(t, d, Options{})
		samples, failed, err := h.m.MetricsBatch(context.Background(), names)
		if err != nil {
			t.Fatal(err)
		}
		if d.batches != 1 || d.calls["metrics"] != 0 {
			t.Fatalf("batches %d, single calls %d: want one batch, no single calls", d.batches, d.calls["metrics"])
		}
		if len(samples) != 2 || samples["a"].CPUPercent != 2 {
			t.Fatalf("samples %v", samples)
		}
		if !errors.Is(failed["../bad"], drivers.ErrInvalidArgument) {
			t.Fatalf("hostile name: %v, want invalid_argument", failed["../bad"])
		}
		if drivers.CodeOf(failed["gone"]) != drivers.Internal || !drivers.IsClassified(failed["gone"]) {
			t.Fatalf("raw per-name error not classified: %v", failed["gone"])
		}
	})

	t.Run("batch failure goes through the breaker", func(t *testing.T) {
		d := &batchDriver{scriptDriver: newScriptDriver("fake"), fail: errRawDown}
		h := newHarness(t, d, Options{RetryAttempts: 1, BreakerFailures: 1})
		if _, _, err := h.m.MetricsBatch(context.Background(), names[:2]); !errors.Is(err, drivers.ErrUnavailable) {
			t.Fatalf("err %v, want unavailable", err)
		}
		if _, _, err := h.m.MetricsBatch(context.Background(), names[:2]); !errors.Is(err, drivers.ErrUnavailable) || d.batches != 1 {
			t.Fatalf("open breaker: err %v after %d batches, want a fast unavailable with no new call", err, d.batches)
		}
	})
}
