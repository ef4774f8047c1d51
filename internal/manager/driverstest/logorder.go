package driverstest

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/internal/testenv"
)

// ScriptHarness is implemented by harnesses whose instances can run a
// given POSIX shell script (process, supervisor, docker). The suite then
// checks the order and times of lines written alternately to stdout and
// stderr.
type ScriptHarness interface {
	// ScriptTemplate is Template(name) running `sh -c script` instead of
	// the conformance script.
	ScriptTemplate(name, script string) drivers.InstanceTemplate
}

// orderLines is how many lines OrderScript writes.
const orderLines = 8

// OrderScript writes "subbus-order 1" … "subbus-order 8", the odd ones to
// stdout and the even ones to stderr, 0.2 s apart (1 s where sleep takes
// whole seconds only), then waits for SIGTERM.
func OrderScript() string {
	return `i=1; while [ $i -le ` + strconv.Itoa(orderLines) + ` ]; do ` +
		`if [ $((i % 2)) -eq 1 ]; then echo "subbus-order $i"; else echo "subbus-order $i" >&2; fi; ` +
		`i=$((i+1)); sleep 0.2 2>/dev/null || sleep 1; done; ` +
		`trap 'exit 0' TERM INT; while :; do sleep 1 & wait $!; done`
}

// orderNumber returns n for a line "subbus-order n".
func orderNumber(l drivers.LogLine) (int, bool) {
	s, ok := strings.CutPrefix(strings.TrimSpace(l.Line), "subbus-order ")
	if !ok {
		return 0, false
	}
	n, err := strconv.Atoi(s)
	return n, err == nil
}

// testLogsOrder checks what the driver's capabilities say about its log
// lines: with log_order, a tail of the last N lines is the N written last,
// in the order written, across stdout and stderr; without it, each
// stream's lines are still in order. With log_times every line carries a
// plausible time (the times of lines written over more than a second
// differ by about that much: not the time they were read); without it no
// line carries a time.
func testLogsOrder(t *testing.T, e *env) {
	sh, ok := e.h.(ScriptHarness)
	if !ok || !e.outputInLogs() {
		testLogsTimesOnly(t, e)
		return
	}
	began := time.Now()
	name := e.name("order")
	e.t.Cleanup(func() { e.forceDelete(name) })
	if _, err := e.m.Create(e.ctx(), sh.ScriptTemplate(name, OrderScript())); err != nil {
		t.Fatalf("Create(%s): %v", name, err)
	}
	if _, err := e.m.Start(e.ctx(), name); err != nil {
		t.Fatalf("Start(%s): %v", name, err)
	}
	var all []drivers.LogLine
	testenv.Eventually(t, e.s.settle, func() error {
		var got logLines
		if err := e.m.Logs(e.ctx(), name, drivers.LogOptions{Lines: 1000}, got.emit); err != nil {
			return err
		}
		all = got.snapshot()
		if n := len(all); n < orderLines {
			return fmt.Errorf("%d of %d lines so far", n, orderLines)
		}
		return nil
	})
	for _, l := range all {
		n, ok := orderNumber(l)
		if !ok {
			t.Fatalf("unexpected line %+v", l)
		}
		if want := map[bool]string{true: "stdout", false: "stderr"}[n%2 == 1]; l.Stream != want {
			t.Errorf("line %q on %s, want %s", l.Line, l.Stream, want)
		}
	}
	checkTimes(t, e, all, began)
	if !e.caps.LogOrder {
		last := map[string]int{}
		for _, l := range all {
			n, _ := orderNumber(l)
			if n <= last[l.Stream] {
				t.Errorf("%s: line %d after line %d", l.Stream, n, last[l.Stream])
			}
			last[l.Stream] = n
		}
		return
	}
	for i, l := range all {
		if n, _ := orderNumber(l); n != i+1 {
			t.Fatalf("with log_order, line %d of the tail is %q: %s", i+1, l.Line, describe(all))
		}
	}
	var tail logLines
	e.must("Logs(Lines: 3)", e.m.Logs(e.ctx(), name, drivers.LogOptions{Lines: 3}, tail.emit))
	got := tail.snapshot()
	if len(got) != 3 {
		t.Fatalf("Logs(Lines: 3) gave %d lines: %s", len(got), describe(got))
	}
	for i, l := range got {
		if n, _ := orderNumber(l); n != orderLines-2+i {
			t.Fatalf("Logs(Lines: 3) = %s, want the last three lines written, in order", describe(got))
		}
	}
}

// testLogsTimesOnly checks the times of a running conformance instance's
// lines (harnesses that cannot run a script), and with log_order and the
// instance's own output in the logs, that its ticks come in order.
func testLogsTimesOnly(t *testing.T, e *env) {
	began := time.Now()
	name := e.running("times")
	var all []drivers.LogLine
	testenv.Eventually(t, e.s.settle, func() error {
		var got logLines
		if err := e.m.Logs(e.ctx(), name, drivers.LogOptions{Lines: 1000}, got.emit); err != nil {
			return err
		}
		all = got.snapshot()
		if e.outputInLogs() && countPrefix(all, "subbus-conformance tick") < 3 {
			return fmt.Errorf("%d tick lines, want 3", countPrefix(all, "subbus-conformance tick"))
		}
		if len(all) == 0 {
			return fmt.Errorf("no lines yet")
		}
		return nil
	})
	checkTimes(t, e, all, began.Add(-time.Minute)) // a VM's console may hold a boot before this test's
	if e.outputInLogs() && e.caps.LogOrder {
		prev := 0
		for _, l := range all {
			s, ok := strings.CutPrefix(strings.TrimSpace(l.Line), "subbus-conformance tick ")
			if !ok {
				continue
			}
			n, err := strconv.Atoi(s)
			if err != nil {
				continue
			}
			if n <= prev {
				t.Errorf("with log_order, tick %d comes after tick %d", n, prev)
			}
			prev = n
		}
	}
}

// checkTimes checks the lines' times against the log_times capability.
func checkTimes(t *testing.T, e *env, lines []drivers.LogLine, began time.Time) {
	t.Helper()
	if !e.caps.LogTimes {
		for _, l := range lines {
			if !l.Time.IsZero() {
				t.Errorf("without log_times, line %q carries the time %v (a made-up time)", l.Line, l.Time)
				return
			}
		}
		return
	}
	const slack = 5 * time.Second // clocks of a substrate, seconds of PVE
	var first, last time.Time
	for i, l := range lines {
		switch {
		case l.Time.IsZero():
			t.Fatalf("with log_times, line %q carries no time", l.Line)
		case l.Time.Before(began.Add(-slack)) || l.Time.After(time.Now().Add(slack)):
			t.Errorf("line %q has the time %v, not between %v and now", l.Line, l.Time, began)
		case e.caps.LogOrder && i > 0 && l.Time.Before(lines[i-1].Time):
			t.Errorf("with log_order, line %q (%v) comes after a later one (%v)", l.Line, l.Time, lines[i-1].Time)
		}
		if _, ok := orderNumber(l); ok {
			if first.IsZero() {
				first = l.Time
			}
			last = l.Time
		}
	}
	// The order script's lines span over a second: their times must too.
	if !first.IsZero() && last.Sub(first) < 700*time.Millisecond {
		t.Errorf("the lines written over more than a second carry times %v apart: the time they were read, not written", last.Sub(first))
	}
}

// describe formats lines for a failure message.
func describe(lines []drivers.LogLine) string {
	var b strings.Builder
	for _, l := range lines {
		fmt.Fprintf(&b, "\n  %s %s %q", l.Time.Format(time.RFC3339Nano), l.Stream, l.Line)
	}
	return b.String()
}
