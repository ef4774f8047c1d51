package resilience

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/subbus/subbus/internal/drivers"
)

// fakeSleep records the delays asked for and never waits.
type fakeSleep struct{ delays []time.Duration }

func (f *fakeSleep) sleep(ctx context.Context, d time.Duration) error {
	f.delays = append(f.delays, d)
	return ctx.Err()
}

func codeErr(c drivers.Code) error { return drivers.Errorf(c, "scripted %s", c) }

func TestCallRetriesOnlyRetryableCodes(t *testing.T) {
	tests := []struct {
		name      string
		failures  []error // returned by successive tries, then success
		attempts  int
		wantCalls int
		wantCode  drivers.Code // 0: success
	}{
		{"success first time", nil, 3, 1, 0},
		{"unavailable then success", []error{codeErr(drivers.Unavailable)}, 3, 2, 0},
		{"timeout twice then success", []error{codeErr(drivers.Timeout), codeErr(drivers.Timeout)}, 3, 3, 0},
		{"always unavailable stops at attempts", []error{codeErr(drivers.Unavailable), codeErr(drivers.Unavailable), codeErr(drivers.Unavailable), codeErr(drivers.Unavailable)}, 3, 3, drivers.Unavailable},
		{"attempts 1 disables retries", []error{codeErr(drivers.Unavailable)}, 1, 1, drivers.Unavailable},
		{"not_found is final", []error{codeErr(drivers.NotFound)}, 3, 1, drivers.NotFound},
		{"invalid_argument is final", []error{codeErr(drivers.InvalidArgument)}, 3, 1, drivers.InvalidArgument},
		{"conflict is final", []error{codeErr(drivers.Conflict)}, 3, 1, drivers.Conflict},
		{"already_exists is final", []error{codeErr(drivers.AlreadyExists)}, 3, 1, drivers.AlreadyExists},
		{"unclassified is internal and final", []error{errors.New("boom")}, 3, 1, drivers.Internal},
		{"open breaker fails fast", []error{&drivers.Error{Code: drivers.Unavailable, Err: ErrOpen}}, 3, 1, drivers.Unavailable},
		{"unavailable then not_found", []error{codeErr(drivers.Unavailable), codeErr(drivers.NotFound)}, 5, 2, drivers.NotFound},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fs := &fakeSleep{}
			calls := 0
			v, err := Call(context.Background(), Policy{Attempts: tc.attempts, Sleep: fs.sleep}, func(context.Context) (int, error) {
				calls++
				if calls <= len(tc.failures) {
					return 0, tc.failures[calls-1]
				}
				return 42, nil
			})
			if calls != tc.wantCalls {
				t.Errorf("calls = %d, want %d", calls, tc.wantCalls)
			}
			if got := drivers.CodeOf(err); got != tc.wantCode {
				t.Errorf("code = %v, want %v (err %v)", got, tc.wantCode, err)
			}
			if tc.wantCode == 0 && v != 42 {
				t.Errorf("value = %d, want 42", v)
			}
			if len(fs.delays) != calls-1 {
				t.Errorf("slept %d times for %d calls", len(fs.delays), calls)
			}
		})
	}
}

func TestCallBackoffSchedule(t *testing.T) {
	tests := []struct {
		name   string
		policy Policy
		want   []time.Duration // exact when Jitter < 0, centre otherwise
		jitter float64
	}{
		{"exponential capped, no jitter", Policy{Attempts: 6, InitialDelay: 100 * time.Millisecond, Multiplier: 2, MaxDelay: 500 * time.Millisecond, Jitter: -1},
			[]time.Duration{100, 200, 400, 500, 500}, 0},
		{"multiplier 3", Policy{Attempts: 4, InitialDelay: 10 * time.Millisecond, Multiplier: 3, MaxDelay: time.Second, Jitter: -1},
			[]time.Duration{10, 30, 90}, 0},
		{"default jitter stays in band", Policy{Attempts: 5, InitialDelay: 100 * time.Millisecond, Multiplier: 2, MaxDelay: time.Second},
			[]time.Duration{100, 200, 400, 800}, DefaultJitter},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for run := 0; run < 20; run++ {
				fs := &fakeSleep{}
				p := tc.policy
				p.Sleep = fs.sleep
				_, _ = Call(context.Background(), p, func(context.Context) (struct{}, error) {
					return struct{}{}, codeErr(drivers.Unavailable)
				})
				if len(fs.delays) != len(tc.want) {
					t.Fatalf("delays %v, want %d of them", fs.delays, len(tc.want))
				}
				for i, d := range fs.delays {
					centre := tc.want[i] * time.Millisecond
					lo := time.Duration(float64(centre) * (1 - tc.jitter))
					hi := time.Duration(float64(centre)*(1+tc.jitter)) + 1
					if d < lo || d > hi {
						t.Fatalf("delay %d = %v, want in [%v, %v]", i, d, lo, hi)
					}
				}
			}
		})
	}
}

func TestCallNeverSleepsPastDeadline(t *testing.T) {
	fs := &fakeSleep{}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	calls := 0
	_, err := Call(ctx, Policy{Attempts: 5, InitialDelay: 10 * time.Second, Jitter: -1, Sleep: fs.sleep}, func(context.Context) (int, error) {
		calls++
		return 0, codeErr(drivers.Unavailable)
	})
	if calls != 1 || len(fs.delays) != 0 {
		t.Fatalf("calls=%d sleeps=%v: a delay beyond the deadline must not be slept", calls, fs.delays)
	}
	if drivers.CodeOf(err) != drivers.Unavailable {
		t.Fatalf("err = %v, want the last error (unavailable)", err)
	}

	// With an injected clock near the deadline, the same holds for a short delay.
	dl, _ := ctx.Deadline()
	calls = 0
	_, _ = Call(ctx, Policy{Attempts: 5, InitialDelay: 100 * time.Millisecond, Jitter: -1, Sleep: fs.sleep,
		Now: func() time.Time { return dl.Add(-50 * time.Millisecond) }}, func(context.Context) (int, error) {
		calls++
		return 0, codeErr(drivers.Unavailable)
	})
	if calls != 1 {
		t.Fatalf("calls = %d, want 1", calls)
	}
}

func TestCallCancelledWhileWaiting(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	calls := 0
	_, err := Call(ctx, Policy{Attempts: 5, Sleep: func(ctx context.Context, d time.Duration) error {
		cancel()
		return ctx.Err()
	}}, func(context.Context) (int, error) {
		calls++
		return 0, codeErr(drivers.Unavailable)
	})
	if calls != 1 {
		t.Fatalf("calls = %d, want 1", calls)
	}
	if drivers.CodeOf(err) != drivers.Timeout || !errors.Is(err, drivers.ErrUnavailable) {
		t.Fatalf("err = %v: want timeout wrapping the last (unavailable) error", err)
	}
}

func TestCallDoesNotRetryCallersOwnTimeout(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	calls := 0
	_, err := Call(ctx, Policy{Attempts: 5, Sleep: (&fakeSleep{}).sleep}, func(ctx context.Context) (int, error) {
		calls++
		cancel()
		return 0, drivers.Wrap(drivers.Timeout, ctx.Err(), "op")
	})
	if calls != 1 || drivers.CodeOf(err) != drivers.Timeout {
		t.Fatalf("calls=%d err=%v", calls, err)
	}
}

func TestRealSleepHonoursContext(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	start := time.Now()
	if err := sleep(ctx, time.Minute); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v", err)
	}
	if time.Since(start) > 5*time.Second {
		t.Fatal("sleep ignored the context")
	}
	if err := sleep(context.Background(), time.Millisecond); err != nil {
		t.Fatal(err)
	}
}
