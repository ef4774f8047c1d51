package driverstest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/internal/testenv"
	"github.com/subbus/subbus/messages"
)

// The manager exposes the optional operations with the same signatures as
// the driver interfaces. These helpers find them on the manager; when the
// manager does not (yet) have one, a declared capability is exercised on
// the driver directly (logged), and an undeclared one cannot be checked.

func (e *env) limiter() drivers.Limiter {
	if l, ok := any(e.m).(drivers.Limiter); ok {
		return l
	}
	e.t.Logf("the manager has no GetLimits/SetLimits; calling the driver directly")
	l, _ := e.d.(drivers.Limiter)
	return l
}

func (e *env) snapshotter() drivers.Snapshotter {
	if s, ok := any(e.m).(drivers.Snapshotter); ok {
		return s
	}
	e.t.Logf("the manager has no snapshot methods; calling the driver directly")
	s, _ := e.d.(drivers.Snapshotter)
	return s
}

func (e *env) cloner() drivers.Cloner {
	if c, ok := any(e.m).(drivers.Cloner); ok {
		return c
	}
	e.t.Logf("the manager has no Clone; calling the driver directly")
	c, _ := e.d.(drivers.Cloner)
	return c
}

func (e *env) networker() drivers.Networker {
	if n, ok := any(e.m).(drivers.Networker); ok {
		return n
	}
	e.t.Logf("the manager has no network methods; calling the driver directly")
	n, _ := e.d.(drivers.Networker)
	return n
}

func testUnsupported(t *testing.T, e *env) {
	name := e.create("unsup")
	ctx := e.ctx()
	type op struct {
		capability string
		declared   bool
		call       func() error // nil when the manager has no such method
	}
	var ops []op
	ops = append(ops,
		op{"exec", e.caps.Exec, func() error {
			_, err := e.m.Exec(ctx, name, drivers.ExecRequest{Command: []string{"true"}}, nil, nil)
			return err
		}},
		op{"logs", e.caps.Logs, func() error {
			return e.m.Logs(ctx, name, drivers.LogOptions{Lines: 1}, func(drivers.LogLine) error { return nil })
		}},
	)
	if l, ok := any(e.m).(drivers.Limiter); ok {
		ops = append(ops,
			op{"limits-get", e.caps.Limits, func() error { _, err := l.GetLimits(ctx, name); return err }},
			op{"limits-set", e.caps.Limits, func() error {
				_, err := l.SetLimits(ctx, name, drivers.ResourceLimits{MemoryMB: 256})
				return err
			}})
	} else {
		ops = append(ops, op{"limits", e.caps.Limits, nil})
	}
	if s, ok := any(e.m).(drivers.Snapshotter); ok {
		ops = append(ops,
			op{"snapshot-create", e.caps.Snapshots, func() error { _, err := s.CreateSnapshot(ctx, name, "s1"); return err }},
			op{"snapshot-list", e.caps.Snapshots, func() error { _, err := s.ListSnapshots(ctx, name); return err }},
			op{"snapshot-restore", e.caps.Snapshots, func() error { return s.RestoreSnapshot(ctx, name, "s1") }},
			op{"snapshot-delete", e.caps.Snapshots, func() error { return s.DeleteSnapshot(ctx, name, "s1") }})
	} else {
		ops = append(ops, op{"snapshots", e.caps.Snapshots, nil})
	}
	if c, ok := any(e.m).(drivers.Cloner); ok {
		ops = append(ops, op{"clone", e.caps.Clone, func() error {
			target := e.name("unsup-clone")
			_, err := c.Clone(ctx, name, target)
			if err == nil {
				e.forceDelete(target)
			}
			return err
		}})
	} else {
		ops = append(ops, op{"clone", e.caps.Clone, nil})
	}
	if n, ok := any(e.m).(drivers.Networker); ok {
		ops = append(ops,
			op{"network-list", e.caps.Networks, func() error { _, err := n.ListNetworks(ctx); return err }},
			op{"network-attach", e.caps.Networks, func() error {
				_, err := n.AttachNetwork(ctx, name, drivers.NetworkConfig{NetworkName: "subbus-none"})
				return err
			}},
			op{"network-detach", e.caps.Networks, func() error { return n.DetachNetwork(ctx, name, "subbus-none") }})
	} else {
		ops = append(ops, op{"networks", e.caps.Networks, nil})
	}
	for _, o := range ops {
		if o.declared {
			continue
		}
		e.run(o.capability, func(t *testing.T, e *env) {
			if o.call == nil {
				t.Skipf("the manager has no method for %s yet, so its unsupported answer cannot be checked", o.capability)
			}
			err := o.call()
			if !errors.Is(err, drivers.ErrUnsupported) {
				t.Errorf("%s is not declared but answers %v (code %s), want unsupported", o.capability, err, drivers.CodeOf(err))
			}
		})
	}
}

// collectExec runs an exec through the manager, collecting the output.
func (e *env) exec(name string, req drivers.ExecRequest) (messages.ExecResult, error) {
	return e.m.Exec(e.ctx(), name, req, nil, nil)
}

func testExec(t *testing.T, e *env) {
	if !e.caps.Exec {
		e.skipf("driver does not declare exec")
	}
	name := e.running("exec")
	sh := func(script string) []string { return []string{"sh", "-c", script} }
	cases := []struct {
		test       string
		req        drivers.ExecRequest
		exit       int
		out, errst string
	}{
		{"ExitZero", drivers.ExecRequest{Command: sh("true")}, 0, "", ""},
		{"ExitNonZero", drivers.ExecRequest{Command: sh("exit 3")}, 3, "", ""},
		{"Streams", drivers.ExecRequest{Command: sh("echo out; echo err >&2")}, 0, "out\n", "err\n"},
		{"InstanceEnv", drivers.ExecRequest{Command: sh(`echo "$SUBBUS_CONFORMANCE"`)}, 0, "1\n", ""},
		{"RequestEnv", drivers.ExecRequest{Command: sh(`echo "$SUBBUS_EXTRA"`), Env: map[string]string{"SUBBUS_EXTRA": "x y"}}, 0, "x y\n", ""},
		{"WorkDir", drivers.ExecRequest{Command: sh("pwd"), WorkDir: "/tmp"}, 0, "/tmp\n", ""},
		{"Stdin", drivers.ExecRequest{Command: sh("cat"), Stdin: []byte("from stdin\n")}, 0, "from stdin\n", ""},
	}
	for _, c := range cases {
		e.run(c.test, func(t *testing.T, e *env) {
			res, err := e.exec(name, c.req)
			if err != nil {
				t.Fatalf("Exec(%q): %v", c.req.Command, err)
			}
			if res.ExitCode != c.exit {
				t.Errorf("Exec(%q): exit code %d, want %d (stderr %q)", c.req.Command, res.ExitCode, c.exit, res.Stderr)
			}
			if string(res.Stdout) != c.out || string(res.Stderr) != c.errst {
				t.Errorf("Exec(%q): stdout %q stderr %q, want %q and %q", c.req.Command, res.Stdout, res.Stderr, c.out, c.errst)
			}
		})
	}
	e.run("Streaming", func(t *testing.T, e *env) {
		var out, errb strings.Builder
		res, err := e.m.Exec(e.ctx(), name, drivers.ExecRequest{Command: sh("echo a; echo b >&2; exit 4")}, &out, &errb)
		e.must("Exec with writers", err)
		if res.ExitCode != 4 || out.String() != "a\n" || errb.String() != "b\n" {
			t.Errorf("Exec with writers: exit %d stdout %q stderr %q, want 4, \"a\\n\", \"b\\n\"", res.ExitCode, out.String(), errb.String())
		}
	})
	e.run("Stopped", func(t *testing.T, e *env) {
		stopped := e.create("exec-stopped")
		_, err := e.exec(stopped, drivers.ExecRequest{Command: sh("true")})
		e.wantCode("Exec in a stopped instance", err, drivers.Conflict)
	})
	e.run("Missing", func(t *testing.T, e *env) {
		_, err := e.exec(e.name("missing"), drivers.ExecRequest{Command: sh("true")})
		e.wantCode("Exec in a missing instance", err, drivers.NotFound)
	})
}

// logLines collects lines emitted by Logs, safely for concurrent reads.
type logLines struct {
	mu    sync.Mutex
	lines []drivers.LogLine
}

func (l *logLines) emit(x drivers.LogLine) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, x)
	return nil
}

func (l *logLines) snapshot() []drivers.LogLine {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.lines)
}

func countPrefix(lines []drivers.LogLine, prefix string) int {
	n := 0
	for _, l := range lines {
		if strings.HasPrefix(l.Line, prefix) {
			n++
		}
	}
	return n
}

func testLogs(t *testing.T, e *env) {
	if !e.caps.Logs {
		e.skipf("driver does not declare logs")
	}
	name := e.running("logs")
	if e.s.logsNotOutput != "" {
		e.run("EmitError", func(t *testing.T, e *env) { testLogsEmitError(t, e, name) })
		e.run("Missing", testLogsMissing)
		e.run("Order", testLogsOrder)
		e.run("Output", func(t *testing.T, e *env) { t.Skip(e.s.logsNotOutput) })
		return
	}
	start := StartLine(name)
	// Wait for the start line and two ticks.
	testenv.Eventually(t, e.s.settle, func() error {
		var got logLines
		if err := e.m.Logs(e.ctx(), name, drivers.LogOptions{Lines: 1000}, got.emit); err != nil {
			return err
		}
		lines := got.snapshot()
		if !slices.ContainsFunc(lines, func(l drivers.LogLine) bool { return strings.TrimSpace(l.Line) == start }) {
			return fmt.Errorf("no line %q among %d lines", start, len(lines))
		}
		if n := countPrefix(lines, "subbus-conformance tick"); n < 2 {
			return fmt.Errorf("%d tick lines, want at least 2", n)
		}
		return nil
	})
	e.run("Tail", func(t *testing.T, e *env) {
		var got logLines
		e.must("Logs", e.m.Logs(e.ctx(), name, drivers.LogOptions{Lines: 2}, got.emit))
		lines := got.snapshot()
		if len(lines) != 2 {
			t.Fatalf("Logs(Lines: 2) gave %d lines: %+v", len(lines), lines)
		}
		for _, l := range lines {
			if !strings.HasPrefix(l.Line, "subbus-conformance") || l.Stream == "" {
				t.Errorf("unexpected line %+v (want a conformance line with a stream tag)", l)
			}
			if strings.HasSuffix(l.Line, "\n") {
				t.Errorf("line %q keeps its newline", l.Line)
			}
		}
	})
	e.run("Follow", func(t *testing.T, e *env) {
		var got logLines
		ctx, cancel := context.WithCancel(e.ctx())
		done := make(chan error, 1)
		go func() { done <- e.m.Logs(ctx, name, drivers.LogOptions{Lines: 1, Follow: true}, got.emit) }()
		// New tick lines arrive after the one tail line.
		testenv.Eventually(t, e.s.settle, func() error {
			if n := countPrefix(got.snapshot(), "subbus-conformance tick"); n < 3 {
				return fmt.Errorf("%d tick lines followed, want at least 3", n)
			}
			return nil
		})
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Logs(Follow) after ctx ended: %v, want nil", err)
			}
		case <-time.After(e.s.settle):
			t.Fatalf("Logs(Follow) did not return within %v after ctx ended", e.s.settle)
		}
		// Distinct ticks, in order.
		var ticks []string
		for _, l := range got.snapshot() {
			if strings.HasPrefix(l.Line, "subbus-conformance tick") {
				ticks = append(ticks, l.Line)
			}
		}
		for i := 1; i < len(ticks); i++ {
			if ticks[i] == ticks[i-1] {
				t.Errorf("line %q emitted twice", ticks[i])
			}
		}
	})
	e.run("EmitError", func(t *testing.T, e *env) { testLogsEmitError(t, e, name) })
	e.run("Missing", testLogsMissing)
	e.run("Order", testLogsOrder)
}

// testLogsEmitError checks that an error from emit stops a followed read
// of name's logs (which must have at least one line) and is returned.
func testLogsEmitError(t *testing.T, e *env, name string) {
	stop := errors.New("enough")
	err := e.m.Logs(e.ctx(), name, drivers.LogOptions{Lines: 5, Follow: true}, func(drivers.LogLine) error { return stop })
	if !errors.Is(err, stop) {
		t.Errorf("Logs with a failing emit returned %v, want the emit error", err)
	}
}

func testLogsMissing(t *testing.T, e *env) {
	err := e.m.Logs(e.ctx(), e.name("missing"), drivers.LogOptions{Lines: 5}, func(drivers.LogLine) error { return nil })
	e.wantCode("Logs of a missing instance", err, drivers.NotFound)
}

// checkMask fails for every field that is non-zero while its bit is clear.
func checkMask(t *testing.T, u drivers.ResourceUsage) {
	t.Helper()
	c := u.Counters
	groups := []struct {
		bit      drivers.Measure
		what     string
		nonzero  bool
		negative bool
	}{
		{drivers.MeasureCPU, "cpu", u.CPUPercent != 0 || c.CPUTimeNs != 0, u.CPUPercent < 0},
		{drivers.MeasureMemory, "memory", u.MemoryMB != 0 || c.MemoryBytes != 0, u.MemoryMB < 0},
		{drivers.MeasureDisk, "disk", u.DiskGB != 0 || c.DiskUsedBytes != 0, u.DiskGB < 0},
		{drivers.MeasureDiskIO, "disk_io", u.DiskReadMBps != 0 || u.DiskWriteMBps != 0 || c.DiskReadBytes != 0 || c.DiskWriteBytes != 0,
			u.DiskReadMBps < 0 || u.DiskWriteMBps < 0},
		{drivers.MeasureNetwork, "network", u.NetworkRxMbps != 0 || u.NetworkTxMbps != 0 || c.NetRxBytes != 0 || c.NetTxBytes != 0,
			u.NetworkRxMbps < 0 || u.NetworkTxMbps < 0},
	}
	for _, g := range groups {
		if !u.Measured.Has(g.bit) && g.nonzero {
			t.Errorf("%s fields are set but the %s bit is clear: %+v", g.what, g.what, u)
		}
		if g.negative {
			t.Errorf("%s: negative value: %+v", g.what, u)
		}
	}
}

func testMetrics(t *testing.T, e *env) {
	name := e.running("metrics")
	var first drivers.ResourceUsage
	// CPU and memory are measured on a running instance.
	testenv.Eventually(t, e.s.settle, func() error {
		u, err := e.m.Metrics(e.ctx(), name)
		if err != nil {
			return err
		}
		first = u
		if !u.Measured.Has(drivers.MeasureCPU | drivers.MeasureMemory) {
			return fmt.Errorf("measured %v, want at least cpu and memory on a running instance", u.Measured.Names())
		}
		if u.MemoryMB <= 0 {
			return fmt.Errorf("memory %v MB on a running instance", u.MemoryMB)
		}
		return nil
	})
	checkMask(t, first)
	if first.Time.IsZero() {
		t.Errorf("sample time is zero")
	}
	second, err := e.m.Metrics(e.ctx(), name)
	e.must("Metrics", err)
	checkMask(t, second)
	if second.Counters.CPUTimeNs < first.Counters.CPUTimeNs {
		t.Errorf("cumulative CPU time went back: %d then %d", first.Counters.CPUTimeNs, second.Counters.CPUTimeNs)
	}
	if second.Time.Before(first.Time) {
		t.Errorf("sample time went back: %v then %v", first.Time, second.Time)
	}

	e.run("Stopped", func(t *testing.T, e *env) {
		stopped := e.create("metrics-stopped")
		u, err := e.m.Metrics(e.ctx(), stopped)
		e.must("Metrics of a stopped instance", err)
		checkMask(t, u)
		if u.CPUPercent != 0 || u.NetworkRxMbps != 0 || u.NetworkTxMbps != 0 || u.DiskReadMBps != 0 || u.DiskWriteMBps != 0 {
			t.Errorf("stopped instance has non-zero rates: %+v", u)
		}
	})
	e.run("Missing", func(t *testing.T, e *env) {
		_, err := e.m.Metrics(e.ctx(), e.name("missing"))
		e.wantCode("Metrics of a missing instance", err, drivers.NotFound)
	})
}

func testLimits(t *testing.T, e *env) {
	if !e.caps.Limits {
		e.skipf("driver does not declare limits")
	}
	l := e.limiter()
	if l == nil {
		t.Fatalf("Limits is declared but neither the manager nor the driver implements drivers.Limiter")
	}
	name := e.running("limits")
	got, err := l.SetLimits(e.ctx(), name, drivers.ResourceLimits{MemoryMB: 256})
	e.must("SetLimits(memory)", err)
	if got.MemoryMB != 256 {
		t.Errorf("SetLimits(memory 256) returned %+v", got)
	}
	got, err = l.GetLimits(e.ctx(), name)
	e.must("GetLimits", err)
	if got.MemoryMB != 256 {
		t.Errorf("GetLimits after setting memory 256: %+v", got)
	}
	got, err = l.SetLimits(e.ctx(), name, drivers.ResourceLimits{CPUCores: 1})
	switch {
	case errors.Is(err, drivers.ErrUnsupported):
		t.Logf("cpu limits unsupported: %v", err)
	case err != nil:
		t.Fatalf("SetLimits(cpu 1): %v", err)
	default:
		if got.CPUCores != 1 || got.MemoryMB != 256 {
			t.Errorf("SetLimits(cpu 1) after memory 256 returned %+v, want both (zero fields leave limits unchanged)", got)
		}
	}
	// Removing a limit (drivers.LimitUnsetter): unsupported with nothing
	// changed, or the limit is gone and the others stay.
	if u, ok := l.(drivers.LimitUnsetter); ok {
		_, canUnset := e.d.(drivers.LimitUnsetter)
		got, err = u.UnsetLimits(e.ctx(), name, []drivers.LimitField{drivers.LimitMemoryMB})
		switch {
		case errors.Is(err, drivers.ErrUnsupported):
			t.Logf("removing the memory limit unsupported: %v", err)
			if now, gerr := l.GetLimits(e.ctx(), name); gerr != nil || now.MemoryMB != 256 {
				t.Errorf("an unsupported removal changed the limits: %+v (%v)", now, gerr)
			}
		case err != nil:
			t.Fatalf("UnsetLimits(memory): %v", err)
		case !canUnset:
			t.Errorf("UnsetLimits succeeded on a driver without drivers.LimitUnsetter")
		default:
			if got.MemoryMB != 0 {
				t.Errorf("UnsetLimits(memory) returned %+v, want no memory limit", got)
			}
			if now, gerr := l.GetLimits(e.ctx(), name); gerr != nil || now.MemoryMB != 0 {
				t.Errorf("GetLimits after removing memory: %+v (%v)", now, gerr)
			}
		}
	}
	// The instance keeps running under its limits.
	e.waitState(name, drivers.StateRunning)
	_, err = l.GetLimits(e.ctx(), e.name("missing"))
	e.wantCode("GetLimits of a missing instance", err, drivers.NotFound)
}

func testSnapshots(t *testing.T, e *env) {
	if !e.caps.Snapshots {
		e.skipf("driver does not declare snapshots")
	}
	s := e.snapshotter()
	if s == nil {
		t.Fatalf("Snapshots is declared but neither the manager nor the driver implements drivers.Snapshotter")
	}
	name := e.create("snap")
	ctx := e.ctx()
	snap, err := s.CreateSnapshot(ctx, name, "s1")
	e.must("CreateSnapshot", err)
	if snap.Name != "s1" {
		t.Errorf("CreateSnapshot returned %+v", snap)
	}
	_, err = s.CreateSnapshot(ctx, name, "s1")
	e.wantCode("CreateSnapshot of a taken name", err, drivers.AlreadyExists)
	list, err := s.ListSnapshots(ctx, name)
	e.must("ListSnapshots", err)
	if !slices.ContainsFunc(list, func(x drivers.Snapshot) bool { return x.Name == "s1" }) {
		t.Errorf("ListSnapshots = %+v, want s1", list)
	}
	e.must("RestoreSnapshot", s.RestoreSnapshot(ctx, name, "s1"))
	e.wantCode("RestoreSnapshot of a missing snapshot", s.RestoreSnapshot(ctx, name, "nope"), drivers.NotFound)
	e.must("DeleteSnapshot", s.DeleteSnapshot(ctx, name, "s1"))
	e.wantCode("DeleteSnapshot of a missing snapshot", s.DeleteSnapshot(ctx, name, "s1"), drivers.NotFound)
	list, err = s.ListSnapshots(ctx, name)
	e.must("ListSnapshots", err)
	if slices.ContainsFunc(list, func(x drivers.Snapshot) bool { return x.Name == "s1" }) {
		t.Errorf("ListSnapshots after delete still has s1: %+v", list)
	}
	_, err = s.ListSnapshots(ctx, e.name("missing"))
	e.wantCode("ListSnapshots of a missing instance", err, drivers.NotFound)
}

func testClone(t *testing.T, e *env) {
	if !e.caps.Clone {
		e.skipf("driver does not declare clone")
	}
	c := e.cloner()
	if c == nil {
		t.Fatalf("Clone is declared but neither the manager nor the driver implements drivers.Cloner")
	}
	src := e.create("clonesrc")
	srcInst, err := e.m.Get(e.ctx(), src)
	e.must("Get source", err)
	target := e.name("clonedst")
	t.Cleanup(func() { e.forceDelete(target) })
	inst, err := c.Clone(e.ctx(), src, target)
	e.must("Clone", err)
	if inst.Name != target {
		t.Errorf("Clone returned name %q, want %q", inst.Name, target)
	}
	got := e.waitState(target, drivers.StateStopped)
	if got.Image != srcInst.Image {
		t.Errorf("clone image %q, source image %q", got.Image, srcInst.Image)
	}
	_, err = c.Clone(e.ctx(), src, target)
	e.wantCode("Clone onto an existing name", err, drivers.AlreadyExists)
	_, err = c.Clone(e.ctx(), e.name("missing"), e.name("clonex"))
	e.wantCode("Clone of a missing source", err, drivers.NotFound)
	// The clone runs like its source.
	_, err = e.m.Start(e.ctx(), target)
	e.must("Start clone", err)
	e.waitState(target, drivers.StateRunning)
	if e.outputInLogs() {
		testenv.Eventually(t, e.s.settle, func() error {
			var got logLines
			if err := e.m.Logs(e.ctx(), target, drivers.LogOptions{Lines: 1000}, got.emit); err != nil {
				return err
			}
			if countPrefix(got.snapshot(), "subbus-conformance") == 0 {
				return fmt.Errorf("the clone wrote no conformance line")
			}
			return nil
		})
	}
}

func testNetworks(t *testing.T, e *env) {
	if !e.caps.Networks {
		e.skipf("driver does not declare networks")
	}
	n := e.networker()
	if n == nil {
		t.Fatalf("Networks is declared but neither the manager nor the driver implements drivers.Networker")
	}
	nets, err := n.ListNetworks(e.ctx())
	e.must("ListNetworks", err)
	nh, ok := e.h.(NetworkHarness)
	if !ok {
		t.Skipf("harness has no NetworkHarness; attach/detach not tested (%d networks listed)", len(nets))
	}
	network := nh.Network()
	i := slices.IndexFunc(nets, func(x drivers.Network) bool { return x.Name == network })
	if i < 0 {
		t.Fatalf("ListNetworks does not show the harness network %q: %+v", network, nets)
	}
	if !nets[i].Attachable {
		t.Errorf("ListNetworks: the harness network is not Attachable: %+v", nets[i])
	}
	e.run("AttachDetach", func(t *testing.T, e *env) { testAttachDetach(t, e, n, network) })
	e.run("MissingAtCreate", testNetworkMissingAtCreate)
}

// testAttachDetach: attach answers changed=true, a second attach
// changed=false with no event, detach removes the network, and detach of
// a network the instance is not on and attach to a missing network are
// NotFound.
func testAttachDetach(t *testing.T, e *env, n drivers.Networker, network string) {
	var mu sync.Mutex
	var attached []messages.Event
	unsub := e.m.Subscribe(func(ev messages.Event) {
		if ev.Type == drivers.EventNetworkAttached {
			mu.Lock()
			attached = append(attached, ev)
			mu.Unlock()
		}
	})
	defer unsub()
	name := e.create("net")
	has := func(i drivers.Instance) bool {
		return slices.ContainsFunc(i.Networks, func(c drivers.NetworkConfig) bool { return c.NetworkName == network })
	}
	changed, err := n.AttachNetwork(e.ctx(), name, drivers.NetworkConfig{NetworkName: network})
	e.must("AttachNetwork", err)
	if !changed {
		t.Errorf("AttachNetwork: changed=false, want true")
	}
	testenv.Eventually(t, e.s.settle, func() error {
		i, err := e.m.Get(e.ctx(), name)
		if err != nil {
			return err
		}
		if !has(i) {
			return fmt.Errorf("instance networks %+v lack %q", i.Networks, network)
		}
		return nil
	})
	changed, err = n.AttachNetwork(e.ctx(), name, drivers.NetworkConfig{NetworkName: network})
	e.must("AttachNetwork a second time", err)
	if changed {
		t.Errorf("AttachNetwork a second time: changed=true, want false")
	}
	i, err := e.m.Get(e.ctx(), name)
	e.must("Get", err)
	if k := slices.IndexFunc(i.Networks, func(c drivers.NetworkConfig) bool { return c.NetworkName == network }); k < 0 ||
		slices.ContainsFunc(i.Networks[k+1:], func(c drivers.NetworkConfig) bool { return c.NetworkName == network }) {
		t.Errorf("after attaching twice the instance should be on %q once: %+v", network, i.Networks)
	}
	e.must("DetachNetwork", n.DetachNetwork(e.ctx(), name, network))
	testenv.Eventually(t, e.s.settle, func() error {
		i, err := e.m.Get(e.ctx(), name)
		if err != nil {
			return err
		}
		if has(i) {
			return fmt.Errorf("instance networks %+v still have %q", i.Networks, network)
		}
		return nil
	})
	e.wantCode("DetachNetwork of a network the instance is not on", n.DetachNetwork(e.ctx(), name, network), drivers.NotFound)
	_, err = n.AttachNetwork(e.ctx(), name, drivers.NetworkConfig{NetworkName: e.name("nonet")})
	e.wantCode("AttachNetwork to a missing network", err, drivers.NotFound)
	mu.Lock()
	defer mu.Unlock()
	var mine int
	for _, ev := range attached {
		if ev.Instance == name && ev.Source == messages.SourceManager {
			mine++
		}
	}
	if mine != 1 {
		t.Errorf("two attaches emitted %d network_attached events, want 1 (the second changed nothing): %+v", mine, attached)
	}
}

// testNetworkMissingAtCreate: a template naming a network that does not
// exist is NotFound at create, and nothing is left behind.
func testNetworkMissingAtCreate(t *testing.T, e *env) {
	name := e.name("nonet")
	t.Cleanup(func() { e.forceDelete(name) })
	tmpl := e.h.Template(name)
	tmpl.Networks = append(slices.Clone(tmpl.Networks), drivers.NetworkConfig{NetworkName: e.name("nonet")})
	_, err := e.m.Create(e.ctx(), tmpl)
	e.wantCode("Create on a missing network", err, drivers.NotFound)
	_, err = e.m.Get(e.ctx(), name)
	e.wantCode("Get after a create on a missing network", err, drivers.NotFound)
	list, err := e.m.List(e.ctx())
	e.must("List", err)
	if slices.ContainsFunc(list, func(i drivers.Instance) bool { return i.Name == name }) {
		t.Errorf("List shows %s after its create failed", name)
	}
}

// testEvents checks the native feed on the driver itself (the manager runs
// its own Watch in the background; drivers must allow several watchers).
func testEvents(t *testing.T, e *env) {
	if !e.caps.Events {
		e.skipf("driver does not declare events")
	}
	src, ok := e.d.(drivers.EventSource)
	if !ok {
		t.Fatalf("Events is declared but the driver does not implement drivers.EventSource")
	}
	var mu sync.Mutex
	var seen []drivers.Event
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- src.Watch(ctx, func(ev drivers.Event) {
			mu.Lock()
			seen = append(seen, ev)
			mu.Unlock()
		})
	}()
	defer func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Watch returned %v after ctx ended, want nil", err)
			}
		case <-time.After(e.s.settle):
			t.Errorf("Watch did not return within %v after ctx ended", e.s.settle)
		}
	}()
	name := e.create("events")
	_, err := e.m.Start(e.ctx(), name)
	e.must("Start", err)
	started := func(ev drivers.Event) bool {
		return ev.Instance == name && (ev.Type == drivers.EventStarted ||
			(ev.Type == drivers.EventStateChanged && ev.State == drivers.StateRunning) ||
			(ev.Type == drivers.EventAppeared && ev.State == drivers.StateRunning))
	}
	stopped := func(ev drivers.Event) bool {
		return ev.Instance == name && (ev.Type == drivers.EventStopped ||
			(ev.Type == drivers.EventStateChanged && ev.State == drivers.StateStopped))
	}
	waitEvent := func(what string, match func(drivers.Event) bool) {
		t.Helper()
		testenv.Eventually(t, e.s.settle, func() error {
			mu.Lock()
			defer mu.Unlock()
			for _, ev := range seen {
				if match(ev) {
					if ev.Time.IsZero() {
						return fmt.Errorf("event %+v has no time", ev)
					}
					return nil
				}
			}
			return fmt.Errorf("no %s event for %s among %d events", what, name, len(seen))
		})
	}
	// Watch may not be listening yet when Start returns (there is no
	// portable "established" signal), so the instance is restarted every
	// few seconds until a started event shows up. Once one has, the feed is
	// live and the stop below must be seen.
	lastKick := time.Now()
	testenv.Eventually(t, e.s.settle, func() error {
		mu.Lock()
		found := slices.ContainsFunc(seen, started)
		mu.Unlock()
		if found {
			return nil
		}
		if time.Since(lastKick) > e.s.settle/5 {
			lastKick = time.Now()
			if err := e.m.Restart(e.ctx(), name, e.stopOpts()); err != nil {
				return err
			}
		}
		return fmt.Errorf("no started event for %s yet", name)
	})
	waitEvent("started", started)
	_, err = e.m.Stop(e.ctx(), name, e.stopOpts())
	e.must("Stop", err)
	waitEvent("stopped", stopped)
}
