package resilience

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/sony/gobreaker/v2"

	"github.com/subbus/subbus/internal/drivers"
)

// Breaker defaults.
const (
	DefaultBreakerFailures    = 5
	DefaultBreakerOpenTimeout = 30 * time.Second
)

// BreakerState is the state of a circuit breaker.
type BreakerState string

const (
	BreakerClosed   BreakerState = "closed"    // calls pass
	BreakerOpen     BreakerState = "open"      // calls fail at once with Unavailable
	BreakerHalfOpen BreakerState = "half_open" // one trial call passes
)

func stateOf(s gobreaker.State) BreakerState {
	switch s {
	case gobreaker.StateOpen:
		return BreakerOpen
	case gobreaker.StateHalfOpen:
		return BreakerHalfOpen
	}
	return BreakerClosed
}

// BreakerSettings configure a Breaker. The zero value takes the defaults.
type BreakerSettings struct {
	// Name names the breaker (the substrate) in errors.
	Name string
	// Failures is the number of consecutive substrate-down errors that
	// opens the breaker (default 5).
	Failures int
	// OpenTimeout is how long the breaker stays open before it lets one
	// trial call through (half-open); default 30s.
	OpenTimeout time.Duration
	// OnStateChange is called on every state change. It runs while the
	// breaker's lock is held: it must not call back into the breaker, and
	// should only record or hand off the change.
	OnStateChange func(name string, from, to BreakerState)
}

// Breaker is a circuit breaker around one substrate. It is safe for
// concurrent use.
//
// Only substrate-down errors count against it (see Trips): Unavailable and
// Timeout codes, unless the caller's own context ended. Every other
// outcome, errors of the caller's making included (not_found,
// invalid_argument, already_exists, conflict, unsupported), counts as a
// success: the substrate answered. While open, every call fails at once,
// without running, with an Unavailable error saying the breaker is open.
// After OpenTimeout it half-opens and lets one call through: success
// closes it, a substrate-down error opens it again.
type Breaker struct {
	name string
	cb   *gobreaker.TwoStepCircuitBreaker[struct{}]
}

// Outcome markers handed to gobreaker: we classify, it counts.
var (
	errTrip     = errors.New("substrate down")
	errExcluded = errors.New("caller gave up")
)

// NewBreaker returns a closed breaker.
func NewBreaker(s BreakerSettings) *Breaker {
	if s.Failures <= 0 {
		s.Failures = DefaultBreakerFailures
	}
	if s.OpenTimeout <= 0 {
		s.OpenTimeout = DefaultBreakerOpenTimeout
	}
	failures := uint32(s.Failures)
	st := gobreaker.Settings{
		Name:        s.Name,
		MaxRequests: 1,
		Timeout:     s.OpenTimeout,
		ReadyToTrip: func(c gobreaker.Counts) bool { return c.ConsecutiveFailures >= failures },
		IsSuccessful: func(err error) bool {
			return err == nil
		},
		IsExcluded: func(err error) bool { return errors.Is(err, errExcluded) },
	}
	if s.OnStateChange != nil {
		hook := s.OnStateChange
		st.OnStateChange = func(name string, from, to gobreaker.State) { hook(name, stateOf(from), stateOf(to)) }
	}
	return &Breaker{name: s.Name, cb: gobreaker.NewTwoStepCircuitBreaker[struct{}](st)}
}

// Trips reports whether err, the outcome of a call made for a caller whose
// context is ctx, counts against the substrate: its code is Unavailable or
// Timeout and the caller had not given up (ctx not ended).
func Trips(ctx context.Context, err error) bool {
	if err == nil || ctx.Err() != nil {
		return false
	}
	c := drivers.CodeOf(err)
	return c == drivers.Unavailable || c == drivers.Timeout
}

// Do runs fn unless the breaker is open, and records its outcome. ctx is the
// caller's context: an error returned after it ended never counts. A
// rejected call returns an Unavailable error (errors.Is ErrOpen) without
// running fn. A panic in fn is recorded as a failure and re-panics.
func (b *Breaker) Do(ctx context.Context, fn func() error) (err error) {
	done, aerr := b.cb.Allow()
	if aerr != nil {
		return &drivers.Error{Code: drivers.Unavailable, Message: fmt.Sprintf("%s: circuit breaker is %s, failing fast", b.name, b.stateWord(aerr)), Err: ErrOpen}
	}
	finished := false
	defer func() {
		if !finished {
			done(errTrip)
		}
	}()
	err = fn()
	finished = true
	switch {
	case ctx.Err() != nil:
		done(errExcluded)
	case Trips(ctx, err):
		done(errTrip)
	default:
		done(nil)
	}
	return err
}

// ErrOpen is in the chain of every error a rejecting breaker returns.
var ErrOpen = errors.New("circuit breaker open")

func (b *Breaker) stateWord(err error) string {
	if errors.Is(err, gobreaker.ErrTooManyRequests) {
		return "half-open with its trial call in progress"
	}
	return "open"
}

// State returns the current state (moving open to half-open when the open
// timeout has passed).
func (b *Breaker) State() BreakerState { return stateOf(b.cb.State()) }

// ConsecutiveFailures returns the current run of substrate-down errors.
func (b *Breaker) ConsecutiveFailures() int { return int(b.cb.Counts().ConsecutiveFailures) }
