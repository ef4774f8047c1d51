package cli

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/subbus/subbus/client"
	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/internal/drivers/process"
	"github.com/subbus/subbus/internal/manager"
	"github.com/subbus/subbus/internal/testenv"
	"github.com/subbus/subbus/internal/worker/workertest"
	"github.com/subbus/subbus/messages"
)

// These end-to-end tests start a real nats-server (embedded, on a random
// loopback port) and a real worker serving the real process driver, then
// run subbus in-process exactly as a user would.

// startWorker runs a real worker for host serving the process driver.
func startWorker(t *testing.T, url, host string) {
	t.Helper()
	startWorkerCgroups(t, url, host, "off")
}

// startWorkerCgroups is startWorker with the process driver's cgroups
// option ("auto": limits are served when the cgroup tree is writable).
func startWorkerCgroups(t *testing.T, url, host, cgroups string) {
	t.Helper()
	d := process.New(process.Options{StateDir: t.TempDir(), Cgroups: cgroups, DefaultUser: "root", AllowRoot: true})
	workertest.StartWorker(t, url, host, manager.New(d, manager.Options{Host: host}))
}

type result struct {
	stdout, stderr string
	code           int
}

// subbus runs the CLI against url.
func subbus(t *testing.T, url string, args ...string) result {
	t.Helper()
	var out, errOut bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	code := Run(ctx, append([]string{"--server", url}, args...), &out, &errOut)
	return result{out.String(), errOut.String(), code}
}

func (r result) want(t *testing.T, code int, what string) result {
	t.Helper()
	if r.code != code {
		t.Fatalf("%s: exit %d, want %d\nstdout: %s\nstderr: %s", what, r.code, code, r.stdout, r.stderr)
	}
	return r
}

func unique(prefix string) string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return prefix + "-" + hex.EncodeToString(b)
}

func decode[T any](t *testing.T, s string) T {
	t.Helper()
	var v T
	if err := json.Unmarshal([]byte(s), &v); err != nil {
		t.Fatalf("--json output does not parse as %T: %v\n%s", v, err, s)
	}
	return v
}

// TestOutputShapes: what subbus prints, as tables and as --json, through
// a real worker with the process driver. (The commands' behaviour, the
// same on every driver, is the session of internal/e2etest.)
func TestOutputShapes(t *testing.T) {
	workertest.Isolate(t)
	url := workertest.StartNATS(t)
	startWorkerCgroups(t, url, "h1", "auto")
	name := unique("e2e")
	t.Cleanup(func() { subbus(t, url, "process", "delete", name, "--force") })

	// create: the words after -- are the whole command (--image optional).
	r := subbus(t, url, "process", "create", name, "--label", "team=qa", "--env", "GREETING=hello",
		"--json", "--", "/bin/sh", "-c", `echo "$GREETING from the instance"; echo warning >&2; exec sleep 300`).want(t, 0, "create")
	inst := decode[messages.Instance](t, r.stdout)
	if inst.Name != name || inst.Metadata["team"] != "qa" || inst.Host != "h1" {
		t.Fatalf("created %+v", inst)
	}

	r = subbus(t, url, "process", "start", name).want(t, 0, "start")
	if !strings.Contains(r.stdout, name+": started") {
		t.Fatalf("start said %q", r.stdout)
	}
	r = subbus(t, url, "process", "start", name, "--json").want(t, 0, "start again")
	if res := decode[messages.ChangedResult](t, r.stdout); res.Changed {
		t.Fatalf("second start changed something: %+v", res)
	}

	// list: table and JSON.
	r = subbus(t, url, "process", "list").want(t, 0, "list")
	if !strings.HasPrefix(r.stdout, "NAME") || !strings.Contains(r.stdout, name) || !strings.Contains(r.stdout, "running") {
		t.Fatalf("list table:\n%s", r.stdout)
	}
	r = subbus(t, url, "process", "list", "--host", "h1", "--json").want(t, 0, "list --json")
	found := false
	for _, i := range decode[[]messages.Instance](t, r.stdout) {
		found = found || (i.Name == name && i.State == drivers.StateRunning)
	}
	if !found {
		t.Fatalf("%s not running in %s", name, r.stdout)
	}
	r = subbus(t, url, "process", "get", name).want(t, 0, "get")
	if !strings.Contains(r.stdout, "State:") || !strings.Contains(r.stdout, "team=qa") {
		t.Fatalf("get:\n%s", r.stdout)
	}

	// exec: output streamed to stdout/stderr, exit status propagated.
	r = subbus(t, url, "process", "exec", name, "--", "/bin/sh", "-c", "echo out; echo err >&2; exit 3").want(t, 3, "exec exit 3")
	if r.stdout != "out\n" || r.stderr != "err\n" {
		t.Fatalf("exec output: stdout %q stderr %q", r.stdout, r.stderr)
	}
	r = subbus(t, url, "process", "exec", name, "--env", "X=42", "--json", "--", "/bin/sh", "-c", "echo $X").want(t, 0, "exec --json")
	if x := decode[execJSON](t, r.stdout); x.ExitCode != 0 || x.Stdout != "42\n" {
		t.Fatalf("exec --json: %+v", x)
	}

	// logs: the instance's output.
	testenv.Eventually(t, 10*time.Second, func() error {
		r := subbus(t, url, "process", "logs", name, "--lines", "10")
		if r.code != 0 || !strings.Contains(r.stdout, "hello from the instance") || !strings.Contains(r.stderr, "warning") {
			return fmt.Errorf("logs: exit %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
		}
		return nil
	})
	r = subbus(t, url, "process", "logs", name, "--json").want(t, 0, "logs --json")
	if lines := decode[[]messages.LogLine](t, r.stdout); len(lines) == 0 {
		t.Fatal("logs --json gave no lines")
	}

	// metrics
	r = subbus(t, url, "process", "metrics", name, "--json").want(t, 0, "metrics")
	if u := decode[messages.ResourceUsage](t, r.stdout); !u.Measured.Has(drivers.MeasureMemory) || u.MemoryMB <= 0 {
		t.Fatalf("metrics: %+v", u)
	}
	r = subbus(t, url, "process", "metrics", name).want(t, 0, "metrics table")
	if !strings.HasPrefix(r.stdout, "TIME") {
		t.Fatalf("metrics table:\n%s", r.stdout)
	}
	subbus(t, url, "process", "health").want(t, 0, "health")
	r = subbus(t, url, "process", "capabilities", "--json").want(t, 0, "capabilities")
	caps := decode[messages.CapabilitiesResult](t, r.stdout)
	if !caps.Capabilities.Exec || caps.Host != "h1" {
		t.Fatalf("capabilities: %+v", caps)
	}

	// restart: a new process, so the start line is logged a second time.
	r = subbus(t, url, "process", "restart", name, "--timeout", "5s").want(t, 0, "restart")
	if !strings.Contains(r.stdout, name+": restarted") {
		t.Fatalf("restart said %q", r.stdout)
	}
	r = subbus(t, url, "process", "restart", name, "--timeout", "5s", "--json").want(t, 0, "restart --json")
	if res := decode[messages.ChangedResult](t, r.stdout); res.Instance == nil || res.Instance.State != drivers.StateRunning {
		t.Fatalf("restart --json: %+v", res)
	}

	// stop, delete; errors afterwards.
	r = subbus(t, url, "process", "stop", name, "--timeout", "5s").want(t, 0, "stop")
	if !strings.Contains(r.stdout, "stopped") {
		t.Fatalf("stop said %q", r.stdout)
	}
	r = subbus(t, url, "process", "exec", name, "--", "true").want(t, ExitExecFailed, "exec on a stopped instance")
	if !strings.HasPrefix(r.stderr, "error: conflict: ") {
		t.Fatalf("exec on stopped: %q", r.stderr)
	}
	subbus(t, url, "process", "delete", name).want(t, 0, "delete")
	r = subbus(t, url, "process", "get", name).want(t, ExitNotFound, "get after delete")
	if !strings.HasPrefix(r.stderr, "error: not_found: ") {
		t.Fatalf("get after delete: %q", r.stderr)
	}

	// events: a filtered table.
	testenv.Eventually(t, 10*time.Second, func() error {
		if r := subbus(t, url, "events", "--instance", name, "--type", "deleted"); r.code != 0 || !strings.Contains(r.stdout, name) {
			return fmt.Errorf("events: exit %d: %s%s", r.code, r.stdout, r.stderr)
		}
		return nil
	})
	r = subbus(t, url, "events", "--instance", name, "--type", "created", "--since", "1h").want(t, 0, "events table")
	if lines := strings.Split(strings.TrimSpace(r.stdout), "\n"); len(lines) != 2 || !strings.Contains(lines[1], name) {
		t.Fatalf("filtered events:\n%s", r.stdout)
	}
}

func TestCreateFromTemplate(t *testing.T) {
	workertest.Isolate(t)
	url := workertest.StartNATS(t)
	startWorker(t, url, "h1")
	name := unique("tpl")
	t.Cleanup(func() { subbus(t, url, "process", "delete", name, "--force") })
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	if err := os.WriteFile(good, []byte("name: ignored\nbase_image: /bin/sleep\ncommand: [/bin/sleep, \"300\"]\nmetadata:\n  tier: web\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("name: x\nbase_image: /bin/sleep\nimagee: typo\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r := subbus(t, url, "process", "create", name, "-f", good, "--json").want(t, 0, "create -f")
	if inst := decode[messages.Instance](t, r.stdout); inst.Name != name || inst.Metadata["tier"] != "web" {
		t.Fatalf("created from template: %+v", inst)
	}
	r = subbus(t, url, "process", "create", "-f", bad).want(t, ExitInvalidArgument, "unknown template key")
	if !strings.Contains(r.stderr, "imagee") {
		t.Fatalf("the error must name the unknown key: %q", r.stderr)
	}
}

// TestErrors checks exit statuses and messages of the error paths that need
// no instance.
func TestErrors(t *testing.T) {
	workertest.Isolate(t)
	url := workertest.StartNATS(t)
	startWorker(t, url, "h1")
	cases := []struct {
		name string
		args []string
		code int
		msg  string
	}{
		{"no worker serves the driver on a host", []string{"docker", "list", "--host", "h9"}, ExitNoWorker,
			"error: no_worker: no worker serves docker on host h9"},
		{"no worker serves the driver", []string{"docker", "get", "web"}, ExitNoWorker, "error: no_worker: no worker serves docker\n"},
		{"no worker on that host for a served driver", []string{"process", "list", "--host", "h2"}, ExitNoWorker,
			"no worker serves process on host h2"},
		{"exec without a worker", []string{"docker", "exec", "web", "--host", "h9", "--", "true"}, ExitExecFailed,
			"error: no_worker: no worker serves docker on host h9"},
		{"hostile name", []string{"process", "get", "../etc"}, ExitInvalidArgument, "error: invalid_argument: name"},
		{"hostile host", []string{"process", "list", "--host", "a.>"}, ExitUsage, "error: usage: --host"},
		{"unknown command", []string{"process", "frobnicate"}, ExitUsage, "unknown command"},
		{"missing argument", []string{"process", "get"}, ExitUsage, "usage: subbus <driver> get"},
		{"unknown flag", []string{"process", "list", "--bogus"}, ExitUsage, "bogus"},
		{"reserved driver", []string{"events", "list", "--bogus"}, ExitUsage, "bogus"},
		{"not found", []string{"process", "get", "nope-" + unique("x")}, ExitNotFound, "error: not_found: "},
		{"unsupported op", []string{"process", "snapshot", "list", "web"}, ExitUnsupported, "error: unsupported: "},
		{"create without image", []string{"process", "create", "web"}, ExitUsage, "--image is required"},
		// One rule for -- on every driver: the whole command. The old
		// process reading (arguments to --image) is a contradiction.
		{"arguments after -- for --image", []string{"process", "create", "web", "--image", "/bin/sh", "--", "-c", "true"},
			ExitInvalidArgument, "name different executables"},
		{"image and command disagree", []string{"process", "create", "web", "--image", "/bin/true", "--", "sleep", "1"},
			ExitInvalidArgument, "name different executables"},
		{"bad volume", []string{"process", "create", "web", "--image", "x", "--volume", "onlyone"}, ExitUsage, "SRC:DST"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := subbus(t, url, tc.args...)
			if r.code != tc.code || !strings.Contains(r.stderr, tc.msg) {
				t.Fatalf("exit %d stderr %q; want exit %d and %q", r.code, r.stderr, tc.code, tc.msg)
			}
		})
	}
	// A worker that never answers: no_reply, naming driver and host.
	silentHost(t, url, "h3")
	r := subbus(t, url, "docker", "get", "web", "--host", "h3", "--timeout", "300ms")
	if r.code != ExitNoReply || !strings.Contains(r.stderr, "error: no_reply: timed out waiting for docker on h3") {
		t.Fatalf("silent worker: exit %d %q", r.code, r.stderr)
	}

	// Nothing listens there: unavailable, naming the URL.
	var out, errOut bytes.Buffer
	code := Run(context.Background(), []string{"-s", "nats://127.0.0.1:1", "process", "list"}, &out, &errOut)
	if code != ExitUnavailable || !strings.Contains(errOut.String(), "127.0.0.1:1") {
		t.Fatalf("unreachable NATS: exit %d %q", code, errOut.String())
	}
}

// brokenHost registers a stand-in worker for host that answers every
// process request with an unavailable error, as a worker whose substrate
// is down would.
func brokenHost(t *testing.T, url, host string) {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	svc, err := micro.AddService(nc, micro.Config{Name: messages.ServiceName, Version: "0.0.1-broken",
		Metadata: map[string]string{client.MetaHost: host, client.MetaDrivers: "process"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = svc.Stop() })
	err = svc.AddEndpoint("process-"+host, micro.HandlerFunc(func(r micro.Request) {
		e := drivers.Errorf(drivers.Unavailable, "process substrate on %s is down", host)
		msg, code := messages.ErrorHeaders(e)
		_ = r.Error(code, msg, messages.ErrorReply("", host, e))
	}), micro.WithEndpointSubject("substrate.process."+host+".*"))
	if err != nil {
		t.Fatal(err)
	}
}

// silentHost subscribes to host's docker subjects and never answers.
func silentHost(t *testing.T, url, host string) {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	if _, err := nc.Subscribe("substrate.docker."+host+".*", func(*nats.Msg) {}); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
}

func TestAllHostsAndWorkers(t *testing.T) {
	workertest.Isolate(t)
	url := workertest.StartNATS(t)
	startWorker(t, url, "h1")
	brokenHost(t, url, "h2")
	name := unique("multi")
	t.Cleanup(func() { subbus(t, url, "process", "delete", name, "--force") })
	subbus(t, url, "process", "create", name, "--host", "h1", "--image", "/bin/sleep", "--", "/bin/sleep", "300").want(t, 0, "create")

	r := subbus(t, url, "process", "list", "--all-hosts").want(t, ExitUnavailable, "list --all-hosts with h2 failing")
	if !strings.Contains(r.stdout, name) || !strings.Contains(r.stderr, "error: host h2: unavailable: process substrate on h2 is down") {
		t.Fatalf("all hosts:\nstdout %s\nstderr %s", r.stdout, r.stderr)
	}
	r = subbus(t, url, "process", "list", "--all-hosts", "--json").want(t, ExitUnavailable, "list --all-hosts --json")
	res := decode[allHostsResult](t, r.stdout)
	if len(res.Failed) != 1 || res.Failed[0].Host != "h2" || res.Failed[0].Error.Code != drivers.Unavailable ||
		len(res.Instances) != 1 || res.Instances[0].Name != name || res.Instances[0].Host != "h1" {
		t.Fatalf("all hosts json: %+v", res)
	}

	r = subbus(t, url, "workers").want(t, 0, "workers")
	if !strings.Contains(r.stdout, "h1") || !strings.Contains(r.stdout, "process:ok") || !strings.Contains(r.stdout, "h2") ||
		!strings.Contains(r.stdout, "process:unavailable") || !strings.Contains(r.stdout, "0.0.1-test") {
		t.Fatalf("workers:\n%s", r.stdout)
	}
	r = subbus(t, url, "workers", "--json").want(t, 0, "workers --json")
	ws := decode[[]workerStatus](t, r.stdout)
	if len(ws) != 2 || ws[0].Host != "h1" || ws[0].Health["process"].Health == nil || !ws[0].Health["process"].Healthy ||
		!ws[0].Capabilities["process"].Exec || ws[1].Health["process"].Error == nil {
		t.Fatalf("workers json: %s", r.stdout)
	}
}

func TestNoWorkersAtAll(t *testing.T) {
	workertest.Isolate(t)
	url := workertest.StartNATS(t)
	r := subbus(t, url, "workers")
	if r.code != ExitNoWorker {
		t.Fatalf("workers with none: exit %d %q", r.code, r.stderr)
	}
	r = subbus(t, url, "process", "list", "--all-hosts")
	if r.code != ExitNoWorker || !strings.Contains(r.stderr, "no worker serves process") {
		t.Fatalf("all hosts with none: exit %d %q", r.code, r.stderr)
	}
}

func TestParsing(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	if got, err := parseSince("90m", now); err != nil || !got.Equal(now.Add(-90*time.Minute)) {
		t.Fatalf("since 90m: %v %v", got, err)
	}
	if got, err := parseSince("2026-01-01T00:00:00Z", now); err != nil || got.Year() != 2026 {
		t.Fatalf("since RFC 3339: %v %v", got, err)
	}
	for _, bad := range []string{"-5m", "yesterday", "2026-13-01"} {
		if _, err := parseSince(bad, now); err == nil {
			t.Errorf("since %q accepted", bad)
		}
	}
	v, err := parseVolume("/data:/srv:ro")
	if err != nil || !v.ReadOnly || v.Source != "/data" || v.Target != "/srv" {
		t.Fatalf("volume: %+v %v", v, err)
	}
	for _, bad := range []string{"/a", "/a:/b:rx", "/a:rel", ":/b"} {
		if _, err := parseVolume(bad); err == nil {
			t.Errorf("volume %q accepted", bad)
		}
	}
	n, err := parseNetwork("backend=10.0.0.5")
	if err != nil || n.NetworkName != "backend" || n.IPAddress != "10.0.0.5" {
		t.Fatalf("network: %+v %v", n, err)
	}
	if _, err := parseNetwork("backend=not-an-ip"); err == nil {
		t.Error("network with a bad IP accepted")
	}
	if _, err := parseTemplate("t", []byte("name: a\nname: b\n")); err == nil {
		t.Error("duplicate template keys accepted")
	}
	if _, err := parseTemplate("t", []byte("name: a\nresources: {memory_mb: lots}\n")); !errors.Is(err, drivers.ErrInvalidArgument) {
		t.Errorf("wrong template type: %v", err)
	}
	words, rest := splitWords([]string{"--server", "nats://x", "docker", "--host", "h1", "stop", "web", "--force", "--", "a", "-b"})
	if fmt.Sprint(words) != "[docker stop web]" || fmt.Sprint(rest) != "[--server nats://x --host h1 --force -- a -b]" {
		t.Fatalf("split: %v | %v", words, rest)
	}
}

// syncBuffer is a bytes.Buffer safe to read while Run writes to it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// background runs subbus until cancel is called; wait returns the status.
func background(url string, out, errOut *syncBuffer, args ...string) (cancel func(), wait func() int) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	go func() { done <- Run(ctx, append([]string{"--server", url}, args...), out, errOut) }()
	return cancel, func() int {
		select {
		case code := <-done:
			return code
		case <-time.After(30 * time.Second):
			return -1
		}
	}
}

// running reports whether a process whose command line contains marker exists.
func running(marker string) bool {
	dirs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, d := range dirs {
		b, err := os.ReadFile(d)
		if err == nil && strings.Contains(string(bytes.ReplaceAll(b, []byte{0}, []byte{' '})), marker) {
			return true
		}
	}
	return false
}

// TestInterruptedExecAndClone: interrupting exec stops the command on
// the worker; clone --json prints the clone. (logs --follow and metrics
// --watch are in the session of internal/e2etest.)
func TestInterruptedExecAndClone(t *testing.T) {
	workertest.Isolate(t)
	url := workertest.StartNATS(t)
	startWorker(t, url, "h1")
	name, clone := unique("stream"), unique("clone")
	t.Cleanup(func() {
		subbus(t, url, "process", "delete", name, "--force")
		subbus(t, url, "process", "delete", clone, "--force")
	})
	subbus(t, url, "process", "create", name, "--",
		"/bin/sh", "-c", `i=0; while true; do echo "tick $i"; i=$((i+1)); sleep 0.1; done`).want(t, 0, "create")
	subbus(t, url, "process", "start", name).want(t, 0, "start")

	// Interrupting exec stops the command on the worker.
	marker := fmt.Sprintf("%d.%d", 300+time.Now().Nanosecond()%600, time.Now().Nanosecond()%997)
	var eout, eerr syncBuffer
	cancel, wait := background(url, &eout, &eerr, "process", "exec", name, "--", "/bin/sleep", marker)
	testenv.Eventually(t, 10*time.Second, func() error {
		if !running("sleep " + marker) {
			return errors.New("the exec'd command is not running yet")
		}
		return nil
	})
	cancel()
	if code := wait(); code != ExitInterrupted {
		t.Fatalf("interrupted exec exited %d: %s", code, eerr.String())
	}
	testenv.Eventually(t, 15*time.Second, func() error {
		if running("sleep " + marker) {
			return errors.New("the worker still runs the command of an interrupted exec")
		}
		return nil
	})

	// clone
	subbus(t, url, "process", "stop", name, "--force").want(t, 0, "stop")
	r := subbus(t, url, "process", "clone", name, clone, "--json").want(t, 0, "clone")
	if inst := decode[messages.Instance](t, r.stdout); inst.Name != clone || inst.Image != "/bin/sh" {
		t.Fatalf("clone: %+v", inst)
	}
	subbus(t, url, "process", "clone", name, clone).want(t, ExitAlreadyExists, "clone onto an existing name")
}

func TestProgressOnlyOnATerminal(t *testing.T) {
	var quiet syncBuffer
	stop := (&env{stderr: &quiet}).progress("creating web")
	time.Sleep(300 * time.Millisecond) // long enough for two ticks, were it shown
	stop()
	if quiet.String() != "" {
		t.Fatalf("progress shown when not on a terminal: %q", quiet.String())
	}
	var term syncBuffer
	stop = (&env{stderr: &term, terminal: true}).progress("creating web")
	testenv.Eventually(t, 5*time.Second, func() error {
		if !strings.Contains(term.String(), "creating web… ") {
			return fmt.Errorf("no progress line yet: %q", term.String())
		}
		return nil
	})
	stop()
	if !strings.HasSuffix(term.String(), "\r\033[K") {
		t.Fatalf("the progress line is not cleared: %q", term.String())
	}
}

// checkLimitsCLI runs `limits set` and `limits get` on name: they work
// when the driver declares limits, else exit with ExitUnsupported.
func checkLimitsCLI(t *testing.T, url, name string, supported bool) {
	t.Helper()
	set := []string{"process", "limits", "set", name, "--memory", "128", "--pids", "100"}
	if !supported {
		t.Log("limits not declared: checking they answer unsupported")
		r := subbus(t, url, set...).want(t, ExitUnsupported, "limits set (unsupported)")
		if !strings.HasPrefix(r.stderr, "error: unsupported: ") {
			t.Fatalf("limits set (unsupported): %q", r.stderr)
		}
		subbus(t, url, "process", "limits", "get", name).want(t, ExitUnsupported, "limits get (unsupported)")
		return
	}
	subbus(t, url, set...).want(t, 0, "limits set")
	r := subbus(t, url, "process", "limits", "get", name, "--json").want(t, 0, "limits get --json")
	if l := decode[messages.ResourceLimits](t, r.stdout); l.MemoryMB != 128 || l.PIDs != 100 {
		t.Fatalf("limits get after set: %+v", l)
	}
	r = subbus(t, url, "process", "limits", "get", name).want(t, 0, "limits get")
	if !strings.Contains(r.stdout, "128") {
		t.Fatalf("limits get table:\n%s", r.stdout)
	}
	// Human sizes: 1G is 1024 MiB, 256Mi is 256 MiB; a plain number stays MiB.
	r = subbus(t, url, "process", "limits", "set", name, "--memory", "1G", "--json").want(t, 0, "limits set 1G")
	if l := decode[messages.ResourceLimits](t, r.stdout); l.MemoryMB != 1024 || l.PIDs != 100 {
		t.Fatalf("limits set --memory 1G: %+v", l)
	}
	r = subbus(t, url, "process", "limits", "set", name, "--memory", "256Mi", "--json").want(t, 0, "limits set 256Mi")
	if l := decode[messages.ResourceLimits](t, r.stdout); l.MemoryMB != 256 {
		t.Fatalf("limits set --memory 256Mi: %+v", l)
	}
	// none removes a limit, and the others stay.
	r = subbus(t, url, "process", "limits", "set", name, "--pids", "none", "--json").want(t, 0, "limits set --pids none")
	if l := decode[messages.ResourceLimits](t, r.stdout); l.MemoryMB != 256 || l.PIDs != 0 {
		t.Fatalf("limits set --pids none: %+v", l)
	}
	r = subbus(t, url, "process", "limits", "get", name, "--json").want(t, 0, "limits get after none")
	if l := decode[messages.ResourceLimits](t, r.stdout); l.MemoryMB != 256 || l.PIDs != 0 {
		t.Fatalf("limits get after --pids none: %+v", l)
	}
	subbus(t, url, "process", "limits", "set", name, "--memory", "none", "--cpu", "none").want(t, 0, "limits set none")
	r = subbus(t, url, "process", "limits", "get", name, "--json").want(t, 0, "limits get after all none")
	if l := decode[messages.ResourceLimits](t, r.stdout); !l.IsZero() {
		t.Fatalf("limits after removing all: %+v", l)
	}
	subbus(t, url, "process", "limits", "set", name, "--disk", "none").want(t, ExitUnsupported, "limits set --disk none")
}

// TestEndToEndProcessLimitsUnsupported: with cgroups off the process
// driver does not declare limits, and the CLI exits with ExitUnsupported.
func TestEndToEndProcessLimitsUnsupported(t *testing.T) {
	workertest.Isolate(t)
	url := workertest.StartNATS(t)
	startWorker(t, url, "h1")
	name := unique("nolim")
	t.Cleanup(func() { subbus(t, url, "process", "delete", name, "--force") })
	subbus(t, url, "process", "create", name, "--", "sleep", "300").want(t, 0, "create")
	r := subbus(t, url, "process", "capabilities", "--json").want(t, 0, "capabilities")
	if c := decode[messages.CapabilitiesResult](t, r.stdout); c.Capabilities.Limits {
		t.Fatalf("limits declared with cgroups off: %+v", c)
	}
	checkLimitsCLI(t, url, name, false)
}

// The exit statuses named here are the code table's.
func TestExitStatusesFollowTheCodeTable(t *testing.T) {
	named := map[drivers.Code]int{
		drivers.Internal: ExitInternal, drivers.InvalidArgument: ExitInvalidArgument, drivers.NotFound: ExitNotFound,
		drivers.AlreadyExists: ExitAlreadyExists, drivers.Conflict: ExitConflict, drivers.PermissionDenied: ExitPermissionDenied,
		drivers.Unsupported: ExitUnsupported, drivers.Unavailable: ExitUnavailable, drivers.Timeout: ExitTimeout,
		drivers.Exited: ExitExited,
	}
	for _, c := range drivers.Codes() {
		if got := ExitStatus(drivers.Errorf(c, "x")); got != named[c] || got != c.Exit() {
			t.Errorf("exit status of %s = %d, named %d, table %d", c, got, named[c], c.Exit())
		}
	}
}
