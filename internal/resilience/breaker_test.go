package resilience

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/internal/testenv"
)

func TestTrips(t *testing.T) {
	live := context.Background()
	dead, cancel := context.WithCancel(context.Background())
	cancel()
	tests := []struct {
		name string
		ctx  context.Context
		err  error
		want bool
	}{
		{"nil", live, nil, false},
		{"unavailable", live, codeErr(drivers.Unavailable), true},
		{"substrate timeout", live, codeErr(drivers.Timeout), true},
		{"raw deadline from driver", live, context.DeadlineExceeded, true},
		{"caller cancelled", dead, codeErr(drivers.Timeout), false},
		{"unavailable after caller gave up", dead, codeErr(drivers.Unavailable), false},
		{"not_found", live, codeErr(drivers.NotFound), false},
		{"invalid_argument", live, codeErr(drivers.InvalidArgument), false},
		{"already_exists", live, codeErr(drivers.AlreadyExists), false},
		{"conflict", live, codeErr(drivers.Conflict), false},
		{"unsupported", live, codeErr(drivers.Unsupported), false},
		{"permission_denied", live, codeErr(drivers.PermissionDenied), false},
		{"internal", live, codeErr(drivers.Internal), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := Trips(tc.ctx, tc.err); got != tc.want {
				t.Fatalf("Trips = %v, want %v", got, tc.want)
			}
		})
	}
}

type transitions struct {
	mu  sync.Mutex
	got []string
}

func (tr *transitions) hook(_ string, from, to BreakerState) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	tr.got = append(tr.got, string(from)+">"+string(to))
}

func (tr *transitions) list() []string {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return append([]string(nil), tr.got...)
}

func TestBreakerOpensFailsFastHalfOpensAndCloses(t *testing.T) {
	tr := &transitions{}
	b := NewBreaker(BreakerSettings{Name: "fake", Failures: 3, OpenTimeout: 250 * time.Millisecond, OnStateChange: tr.hook})
	ctx := context.Background()
	down := func() error { return codeErr(drivers.Unavailable) }
	for i := 0; i < 3; i++ {
		if b.State() != BreakerClosed {
			t.Fatalf("opened after %d failures, want 3", i)
		}
		if err := b.Do(ctx, down); drivers.CodeOf(err) != drivers.Unavailable || errors.Is(err, ErrOpen) {
			t.Fatalf("try %d: err = %v", i, err)
		}
	}
	if b.State() != BreakerOpen {
		t.Fatalf("state = %s, want open", b.State())
	}
	ran := false
	err := b.Do(ctx, func() error { ran = true; return nil })
	if ran {
		t.Fatal("an open breaker ran the call")
	}
	if drivers.CodeOf(err) != drivers.Unavailable || !errors.Is(err, ErrOpen) {
		t.Fatalf("open breaker err = %v, want unavailable/ErrOpen", err)
	}
	testenv.Eventually(t, 2*time.Second, func() error {
		if s := b.State(); s != BreakerHalfOpen {
			return errors.New(string(s))
		}
		return nil
	})
	// A failed trial reopens it.
	_ = b.Do(ctx, down)
	if b.State() != BreakerOpen {
		t.Fatalf("failed trial: state = %s, want open", b.State())
	}
	testenv.Eventually(t, 2*time.Second, func() error {
		if s := b.State(); s != BreakerHalfOpen {
			return errors.New(string(s))
		}
		return nil
	})
	if err := b.Do(ctx, func() error { return nil }); err != nil {
		t.Fatal(err)
	}
	if b.State() != BreakerClosed {
		t.Fatalf("after a good trial: state = %s, want closed", b.State())
	}
	want := []string{"closed>open", "open>half_open", "half_open>open", "open>half_open", "half_open>closed"}
	got := tr.list()
	if len(got) != len(want) {
		t.Fatalf("transitions %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("transitions %v, want %v", got, want)
		}
	}
}

func TestBreakerIgnoresCallerErrors(t *testing.T) {
	tests := []struct {
		name string
		ctx  func() context.Context
		err  error
	}{
		{"not_found", context.Background, codeErr(drivers.NotFound)},
		{"invalid_argument", context.Background, codeErr(drivers.InvalidArgument)},
		{"already_exists", context.Background, codeErr(drivers.AlreadyExists)},
		{"conflict", context.Background, codeErr(drivers.Conflict)},
		{"unsupported", context.Background, codeErr(drivers.Unsupported)},
		{"caller cancellation", func() context.Context {
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			return ctx
		}, drivers.Wrap(drivers.Timeout, context.Canceled, "op")},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := NewBreaker(BreakerSettings{Name: "fake", Failures: 2})
			for i := 0; i < 10; i++ {
				_ = b.Do(tc.ctx(), func() error { return tc.err })
			}
			if b.State() != BreakerClosed || b.ConsecutiveFailures() != 0 {
				t.Fatalf("state %s failures %d after caller errors", b.State(), b.ConsecutiveFailures())
			}
		})
	}
}

func TestBreakerSuccessResetsRun(t *testing.T) {
	b := NewBreaker(BreakerSettings{Failures: 3})
	ctx := context.Background()
	for i := 0; i < 10; i++ {
		_ = b.Do(ctx, func() error { return codeErr(drivers.Unavailable) })
		_ = b.Do(ctx, func() error { return codeErr(drivers.Unavailable) })
		_ = b.Do(ctx, func() error { return codeErr(drivers.NotFound) }) // the substrate answered
	}
	if b.State() != BreakerClosed {
		t.Fatalf("state = %s: non-consecutive failures opened it", b.State())
	}
}

func TestBreakerPanicCountsAsFailure(t *testing.T) {
	b := NewBreaker(BreakerSettings{Failures: 1})
	func() {
		defer func() {
			if recover() == nil {
				t.Fatal("panic swallowed")
			}
		}()
		_ = b.Do(context.Background(), func() error { panic("driver bug") })
	}()
	if b.State() != BreakerOpen {
		t.Fatalf("state = %s, want open", b.State())
	}
}
