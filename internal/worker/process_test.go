package worker

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/subbus/subbus/internal/config"
	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/internal/registry"
	"github.com/subbus/subbus/internal/testenv"
	"github.com/subbus/subbus/messages"
)

// startProcessWorker runs a worker serving the real process driver, built
// through the registry as cmd/worker does, with its state in a temp dir.
func startProcessWorker(t *testing.T, mutate func(*Options)) (*runningWorker, *nats.Conn) {
	t.Helper()
	return startProcessWorkerCgroups(t, "off", mutate)
}

// startProcessWorkerCgroups is startProcessWorker with the driver's
// cgroups option ("auto" or "off").
func startProcessWorkerCgroups(t *testing.T, cgroups string, mutate func(*Options)) (*runningWorker, *nats.Conn) {
	t.Helper()
	if _, ok := registry.Lookup("process"); !ok {
		testenv.Require(t, "the process driver in the registry", errors.New("not registered"), "register it in internal/registry/builtin.go")
	}
	cfg, err := config.Parse([]byte(fmt.Sprintf("process:\n  state_dir: %s\n  cgroups: %q\n", t.TempDir(), cgroups)))
	if err != nil {
		t.Fatal(err)
	}
	s := startNATS(t)
	w := startWorker(t, s, nil, func(o *Options) {
		o.Config = cfg
		o.Drivers = []string{"process"}
		if mutate != nil {
			mutate(o)
		}
	})
	return w, connect(t, s.ClientURL())
}

func uniqueName(prefix string) string { return fmt.Sprintf("%s-%06d", prefix, rand.IntN(1000000)) }

// TestProcessOpsThroughBus runs every op of the process driver through the
// bus as subbus does, checks the replies against the schemas, and checks
// that the events landed in SUBSTRATE_EVENTS once each, with request ids.
func TestProcessOpsThroughBus(t *testing.T) {
	w, nc := startProcessWorker(t, nil)
	m := w.Managers()[0]
	var rec eventRecorder
	m.Subscribe(rec.record)
	name := uniqueName("bus")
	t.Cleanup(func() {
		_, _ = callErr(nc, subj("process", messages.OpDelete), messages.DeleteRequest{Name: name, Force: true}, nil, 10*time.Second)
	})
	hostOp := func(op messages.Op) string { return hostSubj("process", w.Host(), op) }

	var caps messages.CapabilitiesResult
	okSchema(t, nc, subj("process", messages.OpCapabilities), nil, &caps)
	if !caps.Capabilities.Exec || !caps.Capabilities.Logs || !caps.Capabilities.Clone {
		t.Fatalf("capabilities %+v", caps)
	}
	var health messages.Health
	okSchema(t, nc, subj("process", messages.OpHealth), nil, &health)
	if !health.Healthy {
		t.Fatalf("health %+v", health)
	}

	script := `echo started; while true; do echo tick; sleep 0.2; done`
	var inst messages.Instance
	okSchemaH(t, nc, subj("process", messages.OpCreate), messages.CreateRequest{Template: messages.Template{
		Name: name, BaseImage: "/bin/sh", Command: []string{"/bin/sh", "-c", script}, Environment: map[string]string{"GREETING": "hello"}}},
		map[string]string{messages.HeaderRequestID: "req-create-" + name}, &inst)
	if inst.Name != name || inst.State != drivers.StateStopped || inst.Host != w.Host() || inst.Driver != "process" {
		t.Fatalf("created %+v", inst)
	}
	wantErr(t, nc, subj("process", messages.OpCreate), messages.CreateRequest{Template: messages.Template{Name: name, BaseImage: "/bin/true"}}, nil, drivers.AlreadyExists)

	var ch messages.ChangedResult
	okSchema(t, nc, hostOp(messages.OpStart), messages.NameRequest{Name: name}, &ch)
	if !ch.Changed || ch.Instance == nil || ch.Instance.State != drivers.StateRunning {
		t.Fatalf("start %+v", ch)
	}
	okSchema(t, nc, subj("process", messages.OpStart), messages.NameRequest{Name: name}, &ch)
	if ch.Changed {
		t.Fatal("second start changed something")
	}
	var list []messages.Instance
	okSchema(t, nc, subj("process", messages.OpList), nil, &list)
	found := false
	for _, i := range list {
		found = found || (i.Name == name && i.State == drivers.StateRunning)
	}
	if !found {
		t.Fatalf("%s not running in list %+v", name, list)
	}
	okSchema(t, nc, subj("process", messages.OpGet), messages.NameRequest{Name: name}, &inst)

	var usage messages.ResourceUsage
	okSchema(t, nc, subj("process", messages.OpMetrics), messages.NameRequest{Name: name}, &usage)
	if !usage.Measured.Has(drivers.MeasureMemory) || usage.MemoryMB <= 0 {
		t.Fatalf("metrics %+v", usage)
	}

	var res messages.ExecResult
	okSchema(t, nc, subj("process", messages.OpExec), map[string]any{"name": name, "command": []string{"/bin/sh", "-c", "echo $GREETING; echo oops >&2; exit 4"}}, &res)
	if string(res.Stdout) != "hello\n" || string(res.Stderr) != "oops\n" || res.ExitCode != 4 {
		t.Fatalf("exec %+v (stdout %q stderr %q)", res, res.Stdout, res.Stderr)
	}
	chunks := streamCall(t, nc, subj("process", messages.OpExec), map[string]any{"name": name, "command": []string{"/bin/sh", "-c", "for i in 1 2 3; do echo out$i; done; exit 2"}, "stream": true}, 0)
	var out strings.Builder
	for _, c := range chunks {
		validateJSONSchema(t, "chunk.schema.json", c)
		out.Write(c.Data)
	}
	if last := chunks[len(chunks)-1]; out.String() != "out1\nout2\nout3\n" || last.ExitCode == nil || *last.ExitCode != 2 {
		t.Fatalf("streamed exec %q, final %+v", out.String(), last)
	}

	testenv.Eventually(t, 10*time.Second, func() error {
		var lines []messages.LogLine
		r, _ := request(t, nc, subj("process", messages.OpLogs), messages.LogsRequest{Name: name, Lines: 5}, nil)
		if r.Error != nil {
			return fmt.Errorf("logs: %+v", r.Error)
		}
		if err := jsonUnmarshal(r.Result, &lines); err != nil {
			return err
		}
		if len(lines) < 2 || lines[len(lines)-1].Line != "tick" {
			return fmt.Errorf("log lines %+v", lines)
		}
		return nil
	})
	follow := streamCall(t, nc, subj("process", messages.OpLogs), messages.LogsRequest{Name: name, Lines: 1, Follow: true}, 4)
	for _, c := range follow {
		if !c.Heartbeat && (c.Line == nil || (c.Line.Line != "tick" && c.Line.Line != "started")) {
			t.Fatalf("followed chunk %+v", c)
		}
	}

	okSchema(t, nc, subj("process", messages.OpStop), messages.StopRequest{Name: name, Timeout: "5s"}, &ch)
	if !ch.Changed || ch.Instance == nil || ch.Instance.State != drivers.StateStopped {
		t.Fatalf("stop %+v", ch)
	}
	wantErr(t, nc, subj("process", messages.OpExec), map[string]any{"name": name, "command": []string{"/bin/true"}}, nil, drivers.Conflict)
	okSchema(t, nc, subj("process", messages.OpRestart), messages.StopRequest{Name: name, Timeout: "5s"}, &ch)
	if ch.Instance == nil || ch.Instance.State != drivers.StateRunning {
		t.Fatalf("restart %+v", ch)
	}

	clone := name + "-clone"
	var cl messages.Instance
	okSchema(t, nc, subj("process", messages.OpClone), messages.CloneRequest{Source: name, Target: clone}, &cl)
	if cl.Name != clone || cl.State != drivers.StateStopped {
		t.Fatalf("clone %+v", cl)
	}
	okSchema(t, nc, subj("process", messages.OpDelete), messages.DeleteRequest{Name: clone}, &ch)

	// Unsupported capabilities answer unsupported (cgroups are off here).
	for _, op := range []messages.Op{messages.OpLimitsGet, messages.OpSnapshotList} {
		wantErr(t, nc, subj("process", op), messages.NameRequest{Name: name}, nil, drivers.Unsupported)
	}
	wantErr(t, nc, subj("process", messages.OpNetworkList), nil, nil, drivers.Unsupported)

	wantErr(t, nc, subj("process", messages.OpDelete), messages.DeleteRequest{Name: name}, nil, drivers.Conflict)
	okSchema(t, nc, subj("process", messages.OpDelete), messages.DeleteRequest{Name: name, Force: true}, &ch)
	wantErr(t, nc, subj("process", messages.OpGet), messages.NameRequest{Name: name}, nil, drivers.NotFound)

	// Every event emitted is stored once (the recorder subscribed after
	// the worker connected the driver, so the stream may hold more); the
	// create event carries the request id.
	waitEvents(t, nc, rec.all(), false)
	var sawCreate bool
	for _, e := range streamEvents(t, nc) {
		validateJSONSchema(t, "event.schema.json", e)
		if e.Data.Type == drivers.EventCreated && e.Subject == name {
			sawCreate = true
			if e.Data.RequestID != "req-create-"+name {
				t.Errorf("created event request id %q", e.Data.RequestID)
			}
		}
	}
	if !sawCreate {
		t.Fatal("no created event in the stream")
	}
}

// TestProcessBadInputChangesNothing: rejected requests leave the process
// driver as it was.
func TestProcessBadInputChangesNothing(t *testing.T) {
	_, nc := startProcessWorker(t, nil)
	var before, after []messages.Instance
	okSchema(t, nc, subj("process", messages.OpList), nil, &before)
	for _, body := range []string{
		`{"template":{"name":"../../x","base_image":"/bin/true"}}`,
		`{"template":{"name":"ok","base_image":"/bin/true"},"extra":1}`,
		`{"template":{"name":["ok"],"base_image":"/bin/true"}}`,
		`{"template":`,
	} {
		wantErr(t, nc, subj("process", messages.OpCreate), body, nil, drivers.InvalidArgument)
	}
	hdr := map[string]string{messages.HeaderDeadline: messages.FormatDeadline(time.Now().Add(-time.Millisecond))}
	wantErr(t, nc, subj("process", messages.OpCreate), messages.CreateRequest{Template: messages.Template{Name: uniqueName("late"), BaseImage: "/bin/true"}}, hdr, drivers.Timeout)
	okSchema(t, nc, subj("process", messages.OpList), nil, &after)
	if len(before) != len(after) {
		t.Fatalf("instances before %d, after %d", len(before), len(after))
	}
}

// TestProcessMetricsStream: samples of running process instances land in
// SUBSTRATE_METRICS.
func TestProcessMetricsStream(t *testing.T) {
	_, nc := startProcessWorker(t, func(o *Options) {
		o.EnableMetrics = true
		o.MetricsInterval = 200 * time.Millisecond
	})
	name := uniqueName("met")
	t.Cleanup(func() {
		_, _ = callErr(nc, subj("process", messages.OpDelete), messages.DeleteRequest{Name: name, Force: true}, nil, 10*time.Second)
	})
	okSchema(t, nc, subj("process", messages.OpCreate), messages.CreateRequest{Template: messages.Template{Name: name, BaseImage: "/bin/sleep", Command: []string{"/bin/sleep", "60"}}}, nil)
	okSchema(t, nc, subj("process", messages.OpStart), messages.NameRequest{Name: name}, nil)
	testenv.Eventually(t, 15*time.Second, func() error {
		return lastMetrics(t, nc, messages.MetricsSubject("process", "h1", name))
	})
}

// TestProcessIdempotencyAndStreamCancel: a keyed create retried through
// the bus creates once; a streamed exec and a followed log stream stop on
// the worker when the client goes away.
func TestProcessIdempotencyAndStreamCancel(t *testing.T) {
	w, nc := startProcessWorker(t, func(o *Options) { o.HeartbeatInterval = 200 * time.Millisecond })
	name := uniqueName("idem")
	t.Cleanup(func() {
		_, _ = callErr(nc, subj("process", messages.OpDelete), messages.DeleteRequest{Name: name, Force: true}, nil, 10*time.Second)
	})
	body := messages.CreateRequest{Template: messages.Template{Name: name, BaseImage: "/bin/sleep", Command: []string{"/bin/sleep", "300"}}}
	hdr := map[string]string{messages.HeaderIdempotencyKey: "create-" + name}
	first := okSchemaH(t, nc, hostSubj("process", "h1", messages.OpCreate), body, hdr, nil)
	again := okSchemaH(t, nc, hostSubj("process", "h1", messages.OpCreate), body, hdr, nil)
	if string(first.Result) != string(again.Result) || first.RequestID != again.RequestID {
		t.Fatalf("retry got %+v, first %+v", again, first)
	}
	wantErr(t, nc, subj("process", messages.OpCreate), body, nil, drivers.AlreadyExists)
	okSchema(t, nc, subj("process", messages.OpStart), messages.NameRequest{Name: name}, nil)

	idle := func() error {
		if n := w.stats().InFlight; n != 0 {
			return fmt.Errorf("%d requests still in flight on the worker", n)
		}
		return nil
	}
	// The client reads the first heartbeat of a silent command, then leaves.
	chunks := streamCall(t, nc, subj("process", messages.OpExec), map[string]any{"name": name, "command": []string{"/bin/sleep", "60"}, "stream": true}, 1)
	if !chunks[0].Heartbeat {
		t.Fatalf("first chunk %+v", chunks[0])
	}
	testenv.Eventually(t, 10*time.Second, idle)
	streamCall(t, nc, subj("process", messages.OpLogs), messages.LogsRequest{Name: name, Follow: true}, 1)
	testenv.Eventually(t, 10*time.Second, idle)
}

// TestProcessEveryOp sends every op of messages.Ops() through the bus to
// the real process driver, with cgroups off and on (auto: limits are
// declared only when the cgroup file system is writable), and checks each
// succeeds when the driver declares the capability it needs and answers
// unsupported otherwise.
func TestProcessEveryOp(t *testing.T) {
	for _, cg := range []string{"off", "auto"} {
		t.Run("cgroups="+cg, func(t *testing.T) { testEveryOp(t, cg) })
	}
}

func testEveryOp(t *testing.T, cgroups string) {
	_, nc := startProcessWorkerCgroups(t, cgroups, nil)
	name := uniqueName("every")
	clone, bg := name+"-c", name+"-bg"
	for _, n := range []string{name, clone, bg} {
		t.Cleanup(func() {
			_, _ = callErr(nc, subj("process", messages.OpDelete), messages.DeleteRequest{Name: n, Force: true}, nil, 10*time.Second)
		})
	}
	var cr messages.CapabilitiesResult
	okSchema(t, nc, subj("process", messages.OpCapabilities), nil, &cr)
	c := cr.Capabilities
	if cgroups == "off" && c.Limits {
		t.Fatal("limits declared with cgroups off")
	}
	if c.Snapshots || c.Networks || !c.Exec || !c.Logs || !c.Clone {
		t.Fatalf("process capabilities %+v: want exec, logs, clone, no snapshots, no networks", c)
	}
	t.Logf("capabilities %+v", c)

	limits := messages.ResourceLimits{MemoryMB: 96, PIDs: 64}
	const snap = "s1"
	// An operation for op-cancel to address (begun without waiting).
	r, _ := request(t, nc, subj("process", messages.OpCreate), messages.CreateRequest{Template: messages.Template{Name: bg,
		Command: []string{"/bin/true"}}}, map[string]string{messages.HeaderNoWait: "1"})
	var begun messages.Operation
	if err := jsonUnmarshal(r.Result, &begun); err != nil || begun.ID == "" {
		t.Fatalf("no-wait create: %+v %v (%s)", r, err, r.Result)
	}
	// Cases in the order they run; need is the capability an op requires
	// (nil: every driver serves it); check inspects a successful result.
	cases := []struct {
		op    messages.Op
		body  any
		need  func() bool
		check func(t *testing.T, r messages.Reply)
	}{
		{op: messages.OpCapabilities},
		{op: messages.OpHealth},
		{op: messages.OpList},
		{op: messages.OpCreate, body: messages.CreateRequest{Template: messages.Template{Name: name, BaseImage: "/bin/sh",
			Command: []string{"/bin/sh", "-c", `echo started; while :; do sleep 0.2; done`}}}},
		{op: messages.OpGet, body: messages.NameRequest{Name: name}},
		{op: messages.OpStart, body: messages.NameRequest{Name: name}, check: wantChanged(true, drivers.StateRunning)},
		{op: messages.OpMetrics, body: messages.NameRequest{Name: name}},
		{op: messages.OpExec, body: map[string]any{"name": name, "command": []string{"/bin/true"}}, need: func() bool { return c.Exec }},
		{op: messages.OpLogs, body: messages.LogsRequest{Name: name, Lines: 5}, need: func() bool { return c.Logs }},
		{op: messages.OpLimitsSet, body: messages.LimitsSetRequest{Name: name, Limits: limits}, need: func() bool { return c.Limits }},
		{op: messages.OpLimitsGet, body: messages.NameRequest{Name: name}, need: func() bool { return c.Limits },
			check: func(t *testing.T, r messages.Reply) {
				var got messages.ResourceLimits
				if err := jsonUnmarshal(r.Result, &got); err != nil || got.MemoryMB != limits.MemoryMB || got.PIDs != limits.PIDs {
					t.Errorf("limits-get after limits-set = %+v (%v), want %+v", got, err, limits)
				}
			}},
		{op: messages.OpSnapshotCreate, body: messages.SnapshotRequest{Name: name, Snapshot: snap}, need: func() bool { return c.Snapshots }},
		{op: messages.OpSnapshotList, body: messages.NameRequest{Name: name}, need: func() bool { return c.Snapshots }},
		{op: messages.OpSnapshotRestore, body: messages.SnapshotRequest{Name: name, Snapshot: snap}, need: func() bool { return c.Snapshots }},
		{op: messages.OpSnapshotDelete, body: messages.SnapshotRequest{Name: name, Snapshot: snap}, need: func() bool { return c.Snapshots }},
		{op: messages.OpNetworkList, need: func() bool { return c.Networks }},
		{op: messages.OpNetworkAttach, body: messages.NetworkAttachRequest{Name: name, Network: messages.NetworkConfig{NetworkName: "sbnet"}}, need: func() bool { return c.Networks }},
		{op: messages.OpNetworkDetach, body: messages.NetworkDetachRequest{Name: name, Network: "sbnet"}, need: func() bool { return c.Networks }},
		{op: messages.OpRestart, body: messages.StopRequest{Name: name, Timeout: "5s"}, check: wantChanged(true, drivers.StateRunning)},
		{op: messages.OpStop, body: messages.StopRequest{Name: name, Timeout: "5s"}, check: wantChanged(true, drivers.StateStopped)},
		{op: messages.OpClone, body: messages.CloneRequest{Source: name, Target: clone}, need: func() bool { return c.Clone }},
		{op: messages.OpDelete, body: messages.DeleteRequest{Name: name}, check: wantChanged(true, "")},
		{op: messages.OpCancel, body: messages.CancelRequest{ID: begun.ID}},
	}
	covered := map[messages.Op]bool{}
	for _, tc := range cases {
		covered[tc.op] = true
	}
	for _, op := range messages.Ops() {
		if !covered[op] {
			t.Fatalf("op %s has no case: add it", op)
		}
	}
	for _, tc := range cases {
		supported := tc.need == nil || tc.need()
		if !supported {
			wantErr(t, nc, subj("process", tc.op), tc.body, nil, drivers.Unsupported)
			continue
		}
		r := okSchema(t, nc, subj("process", tc.op), tc.body, nil)
		if tc.check != nil {
			t.Run(string(tc.op), func(t *testing.T) { tc.check(t, r) })
		}
	}
	wantErr(t, nc, subj("process", messages.OpGet), messages.NameRequest{Name: name}, nil, drivers.NotFound)
}

// wantChanged checks a ChangedResult; state "" means no instance expected
// to be checked (delete).
func wantChanged(changed bool, state drivers.State) func(t *testing.T, r messages.Reply) {
	return func(t *testing.T, r messages.Reply) {
		var ch messages.ChangedResult
		if err := jsonUnmarshal(r.Result, &ch); err != nil {
			t.Fatal(err)
		}
		if ch.Changed != changed || (state != "" && (ch.Instance == nil || ch.Instance.State != state)) {
			t.Errorf("got %+v (instance %+v), want changed=%v state %s", ch, ch.Instance, changed, state)
		}
	}
}
