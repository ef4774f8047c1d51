package manager

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/internal/testenv"
	"github.com/subbus/subbus/messages"
)

// The native feed's report of a change made through the manager is not
// emitted a second time; other instances, crashes, and changes after the
// echo window are.
func TestNativeEchoOfMutationIsDropped(t *testing.T) {
	d := newFullDriver("fake")
	d.add("web", drivers.StateStopped)
	h := newHarness(t, d, Options{EchoWindow: 3 * time.Second})
	if _, err := h.m.Start(context.Background(), "web"); err != nil {
		t.Fatal(err)
	}
	native := func(typ drivers.EventType, inst string) int {
		n := 0
		for _, e := range h.events.all() {
			if e.Source == messages.SourceNative && e.Type == typ && e.Instance == inst {
				n++
			}
		}
		return n
	}
	waitNative := func(typ drivers.EventType, inst string) {
		t.Helper()
		testenv.Eventually(t, 2*time.Second, func() error {
			if native(typ, inst) == 0 {
				return fmt.Errorf("native %s of %s not emitted", typ, inst)
			}
			return nil
		})
	}

	d.events <- drivers.Event{Type: drivers.EventStarted, Instance: "web"}   // the echo
	d.events <- drivers.Event{Type: drivers.EventFailed, Instance: "web"}    // news: always passes
	d.events <- drivers.Event{Type: drivers.EventStopped, Instance: "web"}   // news: a start does not stop
	d.events <- drivers.Event{Type: drivers.EventStarted, Instance: "other"} // another instance
	waitNative(drivers.EventFailed, "web")
	waitNative(drivers.EventStopped, "web")
	waitNative(drivers.EventStarted, "other")
	if n := native(drivers.EventStarted, "web"); n != 0 {
		t.Fatalf("the echo of the manager's start was emitted %d times", n)
	}
	if n := countType(h.events.all(), drivers.EventStarted, "web"); n != 1 {
		t.Fatalf("started of web emitted %d times in all, want exactly once (by the manager)", n)
	}

	h.clock.advance(4 * time.Second) // past the echo window: a start by someone else is news
	d.events <- drivers.Event{Type: drivers.EventStarted, Instance: "web"}
	waitNative(drivers.EventStarted, "web")
	if got := h.m.Stats().Events["native_echo_suppressed"]; got != 1 {
		t.Fatalf("native_echo_suppressed = %d, want 1", got)
	}
}

func countType(evs []messages.Event, typ drivers.EventType, inst string) int {
	n := 0
	for _, e := range evs {
		if e.Type == typ && e.Instance == inst {
			n++
		}
	}
	return n
}

// Every mutating op of the op table says which native events echo it.
func TestEchoesCoverEveryMutatingOp(t *testing.T) {
	for _, op := range messages.Ops() {
		_, listed := echoes[op]
		switch {
		case op.Mutating() && !listed && !noEcho[op]:
			t.Errorf("mutating op %s has no entry in echoes or noEcho", op)
		case !op.Mutating() && (listed || noEcho[op]):
			t.Errorf("op %s does not mutate but is in the echo tables", op)
		}
	}
}

// A start the driver answers with code exited is reported by one failed
// event: the manager's, linked to the request id and carrying the exit.
// The substrate's own failed for that exit is its echo, whether it
// arrives while the start is in flight (held until the start's outcome is
// known) or just after; a native failed during a start that succeeds, or
// after the echo window, is news.
func TestNativeFailedOfAnExitedStartIsItsEcho(t *testing.T) {
	cases := []struct {
		name       string
		code       drivers.Code // the start's outcome (0: started)
		during     bool         // native failed while the start is in flight (else just after)
		later      time.Duration
		wantNative int // native failed events emitted
		wantOwn    int // the manager's failed events
		wantEchoes int64
	}{
		{"exited, native during", drivers.Exited, true, 0, 0, 1, 1},
		{"exited, native after", drivers.Exited, false, time.Second, 0, 1, 1},
		{"exited, native past the window", drivers.Exited, false, 4 * time.Second, 1, 1, 0},
		{"started, native during", 0, true, 0, 1, 0, 0},
		{"started, native after", 0, false, time.Second, 1, 0, 0},
		{"internal, native during", drivers.Internal, true, 0, 1, 1, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d := newFullDriver("fake")
			d.add("web", drivers.StateStopped)
			block := make(chan struct{})
			d.then("start", step{code: c.code, block: block})
			h := newHarness(t, d, Options{EchoWindow: 3 * time.Second})
			ctx := drivers.WithRequestID(context.Background(), "req-1")
			done := make(chan error, 1)
			go func() { _, err := h.m.Start(ctx, "web"); done <- err }()
			if c.during {
				testenv.Eventually(t, 2*time.Second, func() error {
					if d.count("start") == 0 {
						return fmt.Errorf("start not called yet")
					}
					return nil
				})
				d.events <- drivers.Event{Type: drivers.EventFailed, Instance: "web", Details: map[string]string{"exit_code": "3"}}
				testenv.Eventually(t, 2*time.Second, func() error {
					h.m.echo.mu.Lock()
					defer h.m.echo.mu.Unlock()
					if len(h.m.echo.held["web"]) == 0 {
						return fmt.Errorf("the native failed is not held")
					}
					return nil
				})
			}
			close(block)
			if err := <-done; drivers.CodeOf(err) != c.code && !(c.code == 0 && err == nil) {
				t.Fatalf("Start: %v, want code %s", err, c.code)
			}
			if !c.during {
				h.clock.advance(c.later)
				d.events <- drivers.Event{Type: drivers.EventFailed, Instance: "web"}
			}
			d.events <- drivers.Event{Type: drivers.EventStarted, Instance: "other"} // a marker: the feed got this far
			testenv.Eventually(t, 2*time.Second, func() error {
				if countType(h.events.all(), drivers.EventStarted, "other") == 0 {
					return fmt.Errorf("the marker event did not arrive")
				}
				return nil
			})
			var native, own int
			for _, e := range h.events.all() {
				if e.Type != drivers.EventFailed || e.Instance != "web" {
					continue
				}
				if e.Source == messages.SourceNative {
					native++
					continue
				}
				own++
				if e.RequestID != "req-1" || e.Error == nil {
					t.Errorf("the manager's failed event %+v lacks the request id or the error", e)
				}
			}
			if native != c.wantNative || own != c.wantOwn {
				t.Errorf("failed events: %d native, %d of the manager; want %d and %d", native, own, c.wantNative, c.wantOwn)
			}
			if got := h.m.Stats().Events["native_echo_suppressed"]; got != c.wantEchoes {
				t.Errorf("native_echo_suppressed = %d, want %d", got, c.wantEchoes)
			}
		})
	}
}
