// Package resilience holds the two policies the manager wraps around every
// driver call: retries with exponential backoff and jitter (Call, on
// cenkalti/backoff/v5) and a circuit breaker per substrate (Breaker, on
// sony/gobreaker/v2). Both act on the portable error codes of package
// drivers, never on error messages.
package resilience

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/cenkalti/backoff/v5"

	"github.com/subbus/subbus/internal/drivers"
)

// Retry defaults: 3 tries in all, the first retry after 200ms, each delay
// twice the last, none longer than 5s.
const (
	DefaultAttempts     = 3
	DefaultInitialDelay = 200 * time.Millisecond
	DefaultMultiplier   = 2.0
	DefaultMaxDelay     = 5 * time.Second
	DefaultJitter       = 0.5
)

// Policy is a retry policy. The zero value takes the defaults above.
type Policy struct {
	// Attempts is the total number of tries, the first one included;
	// 1 disables retries.
	Attempts int
	// InitialDelay is the delay before the second try; each further delay
	// is Multiplier times the previous one, capped at MaxDelay.
	InitialDelay time.Duration
	Multiplier   float64
	MaxDelay     time.Duration
	// Jitter is the randomization factor in [0,1): a delay d becomes a
	// random value in [d·(1-Jitter), d·(1+Jitter)]. 0 takes DefaultJitter;
	// a negative value disables jitter.
	Jitter float64

	// Sleep waits d or until ctx ends (returning ctx's error). nil uses a
	// timer. Tests inject it to run without real waiting.
	Sleep func(ctx context.Context, d time.Duration) error
	// Now is the clock used to check a delay against ctx's deadline.
	// nil uses time.Now.
	Now func() time.Time
	// OnRetry, if set, is called before each wait with the number of the
	// try that failed (1-based), its error and the delay chosen.
	OnRetry func(attempt int, err error, delay time.Duration)
}

// withDefaults returns p with zero fields set to their defaults.
func (p Policy) withDefaults() Policy {
	if p.Attempts <= 0 {
		p.Attempts = DefaultAttempts
	}
	if p.InitialDelay <= 0 {
		p.InitialDelay = DefaultInitialDelay
	}
	if p.Multiplier < 1 {
		p.Multiplier = DefaultMultiplier
	}
	if p.MaxDelay <= 0 {
		p.MaxDelay = DefaultMaxDelay
	}
	if p.MaxDelay < p.InitialDelay {
		p.MaxDelay = p.InitialDelay
	}
	switch {
	case p.Jitter == 0:
		p.Jitter = DefaultJitter
	case p.Jitter >= 1:
		p.Jitter = 0.99
	}
	if p.Sleep == nil {
		p.Sleep = sleep
	}
	if p.Now == nil {
		p.Now = time.Now
	}
	return p
}

// BackOff returns the backoff/v5 schedule of the policy (a fresh one per
// call: it is not safe for concurrent use).
func (p Policy) BackOff() backoff.BackOff {
	p = p.withDefaults()
	jitter := max(p.Jitter, 0) // negative: none
	b := &backoff.ExponentialBackOff{
		InitialInterval:     p.InitialDelay,
		RandomizationFactor: jitter,
		Multiplier:          p.Multiplier,
		MaxInterval:         p.MaxDelay,
	}
	b.Reset()
	return b
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Retryable reports whether a failed try may be repeated: its error's code
// is retryable (unavailable, timeout), it is not an open breaker's
// rejection (which must fail fast), and ctx, the caller's context, has not
// ended (a timeout caused by the caller's own deadline is final).
func Retryable(ctx context.Context, err error) bool {
	return err != nil && ctx.Err() == nil && drivers.CodeOf(err).Retryable() && !errors.Is(err, ErrOpen)
}

// Call runs op up to p.Attempts times, waiting with exponential backoff and
// jitter between tries. It tries again only while the error is Retryable;
// any other error is returned at once. It never waits past ctx's deadline:
// when the next delay would end after it, Call returns the last error
// instead of sleeping. When ctx ends during a wait, Call returns a Timeout
// error wrapping the last error.
func Call[T any](ctx context.Context, p Policy, op func(ctx context.Context) (T, error)) (T, error) {
	p = p.withDefaults()
	b := p.BackOff()
	for attempt := 1; ; attempt++ {
		v, err := op(ctx)
		if err == nil || attempt >= p.Attempts || !Retryable(ctx, err) {
			return v, err
		}
		d := b.NextBackOff()
		if d == backoff.Stop {
			return v, err
		}
		if dl, ok := ctx.Deadline(); ok && !p.Now().Add(d).Before(dl) {
			return v, err
		}
		if p.OnRetry != nil {
			p.OnRetry(attempt, err, d)
		}
		if serr := p.Sleep(ctx, d); serr != nil {
			return v, &drivers.Error{
				Code:    drivers.Timeout,
				Message: fmt.Sprintf("gave up after %d attempts (%v); last error", attempt, serr),
				Err:     err,
			}
		}
	}
}
