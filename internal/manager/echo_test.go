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
