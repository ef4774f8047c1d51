package docker

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/subbus/subbus/internal/config"
	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/internal/testenv"
)

func TestOptionsFromConfig(t *testing.T) {
	t.Setenv("DOCKER_HOST", "")
	cases := []struct {
		name    string
		yaml    string
		wantErr string
		check   func(Options) error
	}{
		{"defaults", "", "", func(o Options) error {
			if o.Host != "unix:///var/run/docker.sock" || o.MetricsParallelism != 32 || o.AllowPull || o.DefaultResources != (Resources{}) {
				return fmt.Errorf("defaults %+v", o)
			}
			return nil
		}},
		{"set", "docker:\n  host: tcp://127.0.0.1:2376\n  tls_ca: /ca.pem\n  tls_cert: /c.pem\n  tls_key: /k.pem\n  allow_pull: true\n  default_resources: {cpu_cores: 0.5, memory_mb: 64, pids: 100}\n", "", func(o Options) error {
			if o.Host != "tcp://127.0.0.1:2376" || !o.AllowPull || o.DefaultResources != (Resources{CPUCores: 0.5, MemoryMB: 64, PIDs: 100}) {
				return fmt.Errorf("decoded %+v", o)
			}
			return nil
		}},
		{"unknown key", "docker:\n  hots: x\n", "hots", nil},
		{"manager keys", "docker:\n  retry_attempts: 5\n  stop_timeout: 3s\n", "", func(o Options) error { return nil }},
		{"cert without key", "docker:\n  tls_cert: /c.pem\n", "docker.tls_cert", nil},
		{"worker host", "worker:\n  host: node-7\n", "", func(o Options) error {
			if o.HostID != "node-7" {
				return fmt.Errorf("host id %q, want worker.host", o.HostID)
			}
			return nil
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg, err := config.Parse([]byte(c.yaml))
			if err != nil {
				t.Fatal(err)
			}
			o, err := OptionsFromConfig(cfg)
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("err %v, want one naming %q", err, c.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if err := c.check(o); err != nil {
				t.Error(err)
			}
		})
	}
	t.Run("DOCKER_HOST", func(t *testing.T) {
		t.Setenv("DOCKER_HOST", "unix:///tmp/other.sock")
		o, err := OptionsFromConfig(&config.Config{})
		if err != nil || o.Host != "unix:///tmp/other.sock" {
			t.Fatalf("Host %q (%v), want DOCKER_HOST", o.Host, err)
		}
	})
}

func TestUnreachableIsUnavailable(t *testing.T) {
	d := New(Options{Host: "unix:///nonexistent/docker.sock"})
	err := d.Connect(testCtx(t, 5*time.Second))
	if classify(err) != drivers.Unavailable {
		t.Fatalf("Connect to a missing socket: %v (code %s), want unavailable", err, classify(err))
	}
	if err := Detect(context.Background(), mustConfig(t, "docker:\n  host: unix:///nonexistent/docker.sock\n")); err == nil {
		t.Fatal("Detect of a missing socket succeeded")
	}
}

func mustConfig(t *testing.T, y string) *config.Config {
	t.Helper()
	cfg, err := config.Parse([]byte(y))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func TestRepoName(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"web", "subbus-snap/web"},
		{"web-1", "subbus-snap/web-1"},
	} {
		if got := repoName(SnapshotRepo, c.in); got != c.want {
			t.Errorf("repoName(%q) = %q, want %q", c.in, got, c.want)
		}
	}
	// Names Docker would not accept as repositories get a distinguishing hash.
	a, b := repoName(SnapshotRepo, "Web"), repoName(SnapshotRepo, "web.")
	if a == b || a == "subbus-snap/web" || !strings.HasPrefix(a, "subbus-snap/web-") {
		t.Errorf("repoName(Web) = %q, repoName(web.) = %q: want distinct hashed names", a, b)
	}
}

func TestCPUPercentFormula(t *testing.T) {
	prev := sample{cpuTotal: 1e9, cpuSystem: 100e9, onlineCPUs: 2, haveCPU: true}
	cur := sample{cpuTotal: 1.5e9, cpuSystem: 102e9, onlineCPUs: 2, haveCPU: true}
	// 0.5 s of CPU over 2 s of host time summed over 2 CPUs (1 s wall): 50 %.
	if got := cpuPercent(prev, cur); math.Abs(got-50) > 1e-9 {
		t.Errorf("cpuPercent = %v, want 50", got)
	}
	if got := cpuPercent(cur, prev); got != 0 {
		t.Errorf("cpuPercent backwards = %v, want 0", got)
	}
}

// TestCreateFromTemplate checks that every template field reaches Docker.
func TestCreateFromTemplate(t *testing.T) {
	d := connected(t)
	net := sharedNetwork(t)
	net2 := uniqueName("net2")
	dockerCLI(t, "network", "create", "--internal", net2)
	t.Cleanup(func() { _ = exec.Command("docker", "network", "rm", net2).Run() })
	dir := t.TempDir()
	if err := os.WriteFile(dir+"/hello", []byte("from host\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	name := uniqueName("tmpl")
	tmpl := busybox(t, name, "trap 'exit 0' TERM; while :; do sleep 1 & wait $!; done")
	tmpl.Environment["GREETING"] = "hi there"
	tmpl.WorkDir = "/tmp"
	tmpl.Resources = drivers.ResourceLimits{CPUCores: 0.5, MemoryMB: 64, PIDs: 50}
	tmpl.Volumes = []drivers.Volume{{Source: dir, Target: "/data", ReadOnly: true}}
	tmpl.Networks = []drivers.NetworkConfig{{NetworkName: net}, {NetworkName: net2}}
	tmpl.Metadata = map[string]string{"team": "infra"}
	ctx := drivers.WithRequestID(testCtx(t, 60*time.Second), "req-"+name)
	t.Cleanup(func() { forceRemove(name) })
	inst, err := d.Create(ctx, tmpl)
	if err != nil {
		t.Fatal(err)
	}
	requireInternal(t, name)
	if !inst.Managed || inst.Metadata["team"] != "infra" || inst.Limits != tmpl.Resources || inst.Image != TestImage {
		t.Errorf("created instance %+v", inst)
	}
	if len(inst.Networks) != 2 {
		t.Errorf("networks %+v, want %s and %s", inst.Networks, net, net2)
	}
	labels := dockerCLI(t, "inspect", "-f", `{{index .Config.Labels "io.subbus.managed"}} {{index .Config.Labels "io.subbus.host"}} {{index .Config.Labels "io.subbus.request-id"}} {{index .Config.Labels "io.subbus.meta.team"}}`, name)
	if labels != "true test-host req-"+name+" infra" {
		t.Errorf("owner labels %q", labels)
	}
	hc := dockerCLI(t, "inspect", "-f", `{{.HostConfig.NanoCpus}} {{.HostConfig.Memory}} {{.HostConfig.MemorySwap}} {{.HostConfig.PidsLimit}} {{.HostConfig.Binds}}`, name)
	if want := fmt.Sprintf("500000000 %d %d 50 [%s:/data:ro]", 64<<20, 64<<20, dir); hc != want {
		t.Errorf("host config %q, want %q", hc, want)
	}
	if _, err := d.Start(ctx, name); err != nil {
		t.Fatal(err)
	}
	var out, errb strings.Builder
	code, err := d.Exec(ctx, name, drivers.ExecRequest{Command: []string{"sh", "-c", `echo "$GREETING"; pwd; cat /data/hello; touch /data/x`}}, &out, &errb)
	if err != nil {
		t.Fatal(err)
	}
	if code == 0 || out.String() != "hi there\n/tmp\nfrom host\n" || !strings.Contains(errb.String(), "Read-only") {
		t.Errorf("exec: code %d stdout %q stderr %q (want the env, workdir, bind content, and a read-only failure)", code, out.String(), errb.String())
	}
	out.Reset()
	if code, err := d.Exec(ctx, name, drivers.ExecRequest{Command: []string{"id", "-u"}, User: "65534"}, &out, &errb); err != nil || code != 0 || out.String() != "65534\n" {
		t.Errorf("exec as user 65534: code %d err %v out %q", code, err, out.String())
	}
}

func TestDefaultResources(t *testing.T) {
	requireDocker(t)
	d := New(Options{HostID: "test-host", DefaultResources: Resources{MemoryMB: 32, PIDs: 20}})
	if err := d.Connect(testCtx(t, 30*time.Second)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	name := uniqueName("defres")
	createT(t, d, busybox(t, name, "sleep 60"))
	got, err := d.GetLimits(testCtx(t, 10*time.Second), name)
	if err != nil || got != (drivers.ResourceLimits{MemoryMB: 32, PIDs: 20}) {
		t.Fatalf("limits %+v (%v), want the configured defaults", got, err)
	}
}

func TestMissingImage(t *testing.T) {
	d := connected(t)
	name := uniqueName("noimg")
	t.Cleanup(func() { forceRemove(name) })
	tmpl := busybox(t, name, "true")
	tmpl.BaseImage = "subbus-test/does-not-exist:1"
	_, err := d.Create(testCtx(t, 10*time.Second), tmpl)
	if classify(err) != drivers.NotFound || !strings.Contains(err.Error(), "subbus-test/does-not-exist:1") {
		t.Fatalf("Create with a missing image: %v, want not_found naming the image", err)
	}
	if _, err := d.Get(testCtx(t, 10*time.Second), name); classify(err) != drivers.NotFound {
		t.Errorf("a failed create left %s behind (%v)", name, err)
	}
}

// TestRetriedCreate: a create retried with the same request id returns
// the container (completing it); another request gets already_exists.
func TestRetriedCreate(t *testing.T) {
	d := connected(t)
	net := sharedNetwork(t)
	name := uniqueName("retry")
	tmpl := busybox(t, name, "sleep 60")
	tmpl.Networks = []drivers.NetworkConfig{{NetworkName: homeNetwork(t)}, {NetworkName: net}}
	ctx := drivers.WithRequestID(testCtx(t, 60*time.Second), "req-"+name)
	first := createT(t, d, tmpl)
	// Simulate a create that timed out before its second network was
	// connected: take that network away behind the driver's back.
	dockerCLI(t, "network", "disconnect", net, name)
	d2 := connected(t)
	if rep := d2.LastReconciliation(); !slices.Contains(rep.Leftovers, name) || !slices.Contains(rep.Adopted, name) {
		t.Errorf("reconciliation %+v: want %s adopted and reported as a leftover", rep, name)
	}
	h, err := d2.Health(ctx)
	if err != nil || !slices.ContainsFunc(h.Issues, func(s string) bool { return strings.Contains(s, name) }) {
		t.Errorf("health issues %v (%v) do not name the leftover %s", h.Issues, err, name)
	}
	// createT used a ctx without request id: the retry with one is refused …
	if _, err := d2.Create(ctx, tmpl); classify(err) != drivers.AlreadyExists {
		t.Fatalf("create by another request: %v, want already_exists", err)
	}
	// … so make one with a request id, break it, and retry.
	name2 := uniqueName("retry2")
	tmpl2 := tmpl
	tmpl2.Name = name2
	t.Cleanup(func() { forceRemove(name2) })
	made, err := d2.Create(ctx, tmpl2)
	if err != nil {
		t.Fatal(err)
	}
	dockerCLI(t, "network", "disconnect", net, name2)
	again, err := d2.Create(ctx, tmpl2)
	if err != nil {
		t.Fatalf("retried create with the same request id: %v", err)
	}
	requireInternal(t, name2)
	if again.ID != made.ID || len(again.Networks) != 2 {
		t.Errorf("retry returned %+v, want the same container (%s) with both networks again", again, made.ID)
	}
	n := dockerCLI(t, "ps", "-a", "-q", "--filter", "name=^"+name2+"$")
	if strings.Count(n, "\n") != 0 || n == "" {
		t.Errorf("containers named %s: %q, want exactly one", name2, n)
	}
	_ = first
}

// TestListMarksManaged: List shows containers made outside subbus, unmanaged.
func TestListMarksManaged(t *testing.T) {
	d := connected(t)
	managed := uniqueName("mgd")
	createT(t, d, busybox(t, managed, "sleep 60"))
	foreign := uniqueName("foreign")
	t.Cleanup(func() { forceRemove(foreign) })
	dockerCLI(t, "create", "--name", foreign, "--network", "none", TestImage, "sleep", "60")
	list, err := d.List(testCtx(t, 10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, i := range list {
		got[i.Name] = i.Managed
	}
	if m, ok := got[managed]; !ok || !m {
		t.Errorf("List: %s managed=%v listed=%v, want managed", managed, m, ok)
	}
	if m, ok := got[foreign]; !ok || m {
		t.Errorf("List: %s managed=%v listed=%v, want listed unmanaged", foreign, m, ok)
	}
}

func TestHealth(t *testing.T) {
	d := connected(t)
	h, err := d.Health(testCtx(t, 10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	want := dockerCLI(t, "version", "-f", "{{.Server.Version}} {{.Server.APIVersion}}")
	if got := h.Version + " " + h.APIVersion; got != want || !h.Healthy {
		t.Errorf("health %q healthy=%v, docker version says %q", got, h.Healthy, want)
	}
	total := 0
	for _, n := range h.Instances {
		total += n
	}
	if fmt.Sprint(total) != h.Details["containers"] || h.Details["images"] == "" {
		t.Errorf("health counts %v details %v", h.Instances, h.Details)
	}
	// Every warning `docker info` shows is a health issue (this daemon
	// may have none; TestHealthIssues covers the mapping itself).
	var warnings []string
	if err := json.Unmarshal([]byte(dockerCLI(t, "info", "-f", "{{json .Warnings}}")), &warnings); err != nil {
		t.Fatal(err)
	}
	for _, w := range warnings {
		if !slices.Contains(h.Issues, strings.TrimSpace(w)) {
			t.Errorf("daemon warning %q is not among the health issues %q", w, h.Issues)
		}
	}
}

func TestHealthIssues(t *testing.T) {
	leftover := "container c1: its create did not finish (networks missing); retry the create with the same request id or delete it"
	for _, c := range []struct {
		name                string
		warnings, leftovers []string
		want                []string
	}{
		{"none", nil, nil, nil},
		{"warnings kept in order, trimmed, blanks dropped",
			[]string{"WARNING: No swap limit support", "  ", "WARNING: bridge-nf-call-iptables is disabled\n"}, nil,
			[]string{"WARNING: No swap limit support", "WARNING: bridge-nf-call-iptables is disabled"}},
		{"leftovers after warnings", []string{"WARNING: x"}, []string{"c1"}, []string{"WARNING: x", leftover}},
		{"leftovers only", nil, []string{"c1"}, []string{leftover}},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := healthIssues(c.warnings, c.leftovers); !slices.Equal(got, c.want) {
				t.Errorf("healthIssues(%q, %q) = %q, want %q", c.warnings, c.leftovers, got, c.want)
			}
		})
	}
}

// recorder records the events a Watch emits.
type recorder struct {
	mu  sync.Mutex
	evs []drivers.Event
}

func (r *recorder) emit(ev drivers.Event) {
	r.mu.Lock()
	r.evs = append(r.evs, ev)
	r.mu.Unlock()
}

func (r *recorder) find(match func(drivers.Event) bool) (drivers.Event, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, ev := range r.evs {
		if match(ev) {
			return ev, nil
		}
	}
	return drivers.Event{}, fmt.Errorf("no matching event among %d", len(r.evs))
}

// watch runs d.Watch in the background until the test ends (or stop).
func watch(t *testing.T, d *Driver) (*recorder, func()) {
	t.Helper()
	r := &recorder{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Watch(ctx, r.emit) }()
	var once sync.Once
	stop := func() { once.Do(func() { stopWatch(t, cancel, done) }) }
	t.Cleanup(stop)
	return r, stop
}

// stopWatch ends a Watch and checks it returned nil promptly.
func stopWatch(t *testing.T, cancel func(), done chan error) {
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Watch: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Errorf("Watch did not return after cancel")
	}
}

// TestOutOfBandEvents: docker stop/rm made with the CLI reach Watch.
func TestOutOfBandEvents(t *testing.T) {
	d := connected(t)
	name := uniqueName("oob")
	createT(t, d, busybox(t, name, "trap 'exit 0' TERM; while :; do sleep 1 & wait $!; done"))
	rec, _ := watch(t, d)
	dockerCLI(t, "start", name)
	is := func(typ drivers.EventType) func(drivers.Event) bool {
		return func(ev drivers.Event) bool { return ev.Instance == name && ev.Type == typ }
	}
	testenv.Eventually(t, 10*time.Second, func() error { _, err := rec.find(is(drivers.EventStarted)); return err })
	dockerCLI(t, "stop", "-t", "5", name)
	testenv.Eventually(t, 10*time.Second, func() error {
		ev, err := rec.find(is(drivers.EventStopped))
		if err == nil && (ev.State != drivers.StateStopped || ev.Details["exit_code"] != "0" || ev.Time.IsZero()) {
			return fmt.Errorf("stopped event %+v", ev)
		}
		return err
	})
	dockerCLI(t, "rm", name)
	testenv.Eventually(t, 10*time.Second, func() error { _, err := rec.find(is(drivers.EventVanished)); return err })
}

// TestWatchResync: what happens while nobody watches is reported by the
// next Watch (from the cursor the previous one left).
func TestWatchResync(t *testing.T) {
	d := connected(t)
	gone := uniqueName("gone")
	createT(t, d, busybox(t, gone, "sleep 60"))
	_, stop := watch(t, d)
	// Let the watcher see the container, then stop watching.
	time.Sleep(200 * time.Millisecond)
	stop()
	dockerCLI(t, "rm", "-f", gone)
	born := uniqueName("born")
	t.Cleanup(func() { forceRemove(born) })
	dockerCLI(t, "create", "--name", born, "--network", "none", TestImage, "sleep", "60")
	rec, _ := watch(t, d)
	testenv.Eventually(t, 10*time.Second, func() error {
		if _, err := rec.find(func(ev drivers.Event) bool { return ev.Instance == gone && ev.Type == drivers.EventVanished }); err != nil {
			return fmt.Errorf("vanished %s: %w", gone, err)
		}
		if _, err := rec.find(func(ev drivers.Event) bool { return ev.Instance == born && ev.Type == drivers.EventAppeared }); err != nil {
			return fmt.Errorf("appeared %s: %w", born, err)
		}
		return nil
	})
}

// TestOOMKilled: a container that exceeds its memory limit is reported
// as failed with oom=true, and Get shows it in error.
func TestOOMKilled(t *testing.T) {
	d := connected(t)
	name := uniqueName("oom")
	tmpl := busybox(t, name, "sleep 1; exec dd if=/dev/zero of=/dev/null bs=256M count=1")
	tmpl.Resources = drivers.ResourceLimits{MemoryMB: 16}
	createT(t, d, tmpl)
	rec, _ := watch(t, d)
	if _, err := d.Start(testCtx(t, 10*time.Second), name); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 30*time.Second, func() error {
		ev, err := rec.find(func(ev drivers.Event) bool {
			return ev.Instance == name && ev.Type == drivers.EventFailed && ev.Details["oom"] == "true"
		})
		if err == nil && ev.Err == nil {
			return fmt.Errorf("oom event without error: %+v", ev)
		}
		return err
	})
	testenv.Eventually(t, 30*time.Second, func() error {
		i, err := d.Get(testCtx(t, 10*time.Second), name)
		if err != nil {
			return err
		}
		if i.State != drivers.StateError {
			return fmt.Errorf("state %s (%s), want error", i.State, i.NativeState)
		}
		return nil
	})
}

// TestCPUPercentMatchesDockerStats: a container spinning under a
// half-core limit shows ~50% both in the driver and in docker stats.
func TestCPUPercentMatchesDockerStats(t *testing.T) {
	for _, source := range []string{StatsAuto, StatsAPI} {
		t.Run(source, func(t *testing.T) { testCPUPercent(t, source) })
	}
}

func testCPUPercent(t *testing.T, source string) {
	requireDocker(t)
	d := New(Options{HostID: "test-host", StatsSource: source})
	if err := d.Connect(testCtx(t, 30*time.Second)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	name := uniqueName("busy")
	tmpl := busybox(t, name, "while :; do :; done")
	tmpl.Resources = drivers.ResourceLimits{CPUCores: 0.5}
	createT(t, d, tmpl)
	ctx := testCtx(t, 60*time.Second)
	if _, err := d.Start(ctx, name); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second) // let the loop reach its quota
	if _, err := d.Metrics(ctx, name); err != nil {
		t.Fatal(err)
	}
	out := dockerCLI(t, "stats", "--no-stream", "--format", "{{.CPUPerc}}", name)
	theirs, err := strconv.ParseFloat(strings.TrimSuffix(out, "%"), 64)
	if err != nil {
		t.Fatalf("docker stats said %q", out)
	}
	u, err := d.Metrics(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("driver %.1f%%, docker stats %.1f%%", u.CPUPercent, theirs)
	// The loop cannot exceed its half-core quota; on a busy shared
	// machine it may get less, but it must show.
	if u.CPUPercent < 10 || u.CPUPercent > 60 {
		t.Errorf("driver CPU %.1f%%, want up to 50%% (half-core limit) and visibly busy", u.CPUPercent)
	}
	// Both look at about the same seconds (the driver's window spans the
	// docker stats run).
	if tol := max(15, 0.3*theirs); math.Abs(u.CPUPercent-theirs) > tol {
		t.Errorf("driver CPU %.1f%% vs docker stats %.1f%%: differ by more than %.0f points", u.CPUPercent, theirs, tol)
	}
	if u.MemoryMB <= 0 || !u.Measured.Has(drivers.MeasureCPU|drivers.MeasureMemory|drivers.MeasureNetwork|drivers.MeasureDiskIO) {
		t.Errorf("sample %+v", u)
	}
}

// TestSnapshotRestoreKeepsConfig: restore brings the file system back and
// keeps the configuration (env, limits, metadata, running state).
func TestSnapshotRestoreKeepsConfig(t *testing.T) {
	d := connected(t)
	name := uniqueName("snap")
	tmpl := busybox(t, name, "trap 'exit 0' TERM; while :; do sleep 1 & wait $!; done")
	tmpl.Resources = drivers.ResourceLimits{MemoryMB: 48}
	tmpl.Metadata = map[string]string{"tier": "gold"}
	createT(t, d, tmpl)
	ctx := testCtx(t, 60*time.Second)
	if _, err := d.Start(ctx, name); err != nil {
		t.Fatal(err)
	}
	sh := func(script string) string {
		var out, errb strings.Builder
		code, err := d.Exec(ctx, name, drivers.ExecRequest{Command: []string{"sh", "-c", script}}, &out, &errb)
		if err != nil || code != 0 {
			t.Fatalf("exec %q: %d %v %s", script, code, err, errb.String())
		}
		return out.String()
	}
	sh("echo before > /root/state")
	if _, err := d.CreateSnapshot(ctx, name, "s1"); err != nil {
		t.Fatal(err)
	}
	sh("echo after > /root/state")
	if err := d.RestoreSnapshot(ctx, name, "s1"); err != nil {
		t.Fatal(err)
	}
	if got := sh("cat /root/state; echo $SUBBUS_CONFORMANCE"); got != "before\n1\n" {
		t.Errorf("after restore: %q, want the snapshot's file and the same env", got)
	}
	i, err := d.Get(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	if i.State != drivers.StateRunning || i.Limits.MemoryMB != 48 || i.Metadata["tier"] != "gold" || !i.Managed || i.Image != TestImage {
		t.Errorf("restored instance %+v", i)
	}
	// The snapshot image does not make hand-made containers look managed.
	lbl := dockerCLI(t, "image", "inspect", "-f", `[{{index .Config.Labels "io.subbus.managed"}}] {{index .Config.Labels "io.subbus.snapshot.instance"}}`, SnapshotImage(name, "s1"))
	if lbl != "[] "+name {
		t.Errorf("snapshot image labels %q", lbl)
	}
	// Old containers put aside during the restore are gone.
	if out := dockerCLI(t, "ps", "-a", "-q", "--filter", "name="+name+"-subbus-restore"); out != "" {
		t.Errorf("left behind: %q", out)
	}
}

// TestCloneImageRemovedWithClone: deleting a clone removes its image.
func TestCloneImageRemovedWithClone(t *testing.T) {
	d := connected(t)
	src := uniqueName("csrc")
	createT(t, d, busybox(t, src, "sleep 60"))
	dst := uniqueName("cdst")
	t.Cleanup(func() { forceRemove(dst) })
	ctx := testCtx(t, 60*time.Second)
	if _, err := d.Clone(ctx, src, dst); err != nil {
		t.Fatal(err)
	}
	img := repoName(CloneRepo, dst) + ":latest"
	dockerCLI(t, "image", "inspect", img)
	if _, err := d.Delete(ctx, dst, drivers.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := exec.Command("docker", "image", "inspect", img).Run(); err == nil {
		t.Errorf("clone image %s still exists after the clone was deleted", img)
	}
}

// TestTTYLogs: a TTY container's output is one console stream.
func TestTTYLogs(t *testing.T) {
	d := connected(t)
	name := uniqueName("tty")
	t.Cleanup(func() { forceRemove(name) })
	dockerCLI(t, "run", "-d", "-t", "--name", name, "--network", "none", TestImage, "sh", "-c", "echo one; echo two >&2; sleep 60")
	var lines []drivers.LogLine
	testenv.Eventually(t, 10*time.Second, func() error {
		lines = nil
		err := d.Logs(testCtx(t, 10*time.Second), name, drivers.LogOptions{Lines: 10}, func(l drivers.LogLine) error {
			lines = append(lines, l)
			return nil
		})
		if err != nil {
			return err
		}
		if len(lines) != 2 {
			return fmt.Errorf("%d lines: %+v", len(lines), lines)
		}
		return nil
	})
	for i, want := range []string{"one", "two"} {
		if lines[i].Line != want || lines[i].Stream != "console" || lines[i].Time.IsZero() {
			t.Errorf("line %d = %+v, want %q on console with a time", i, lines[i], want)
		}
	}
}

// TestTTYLogsFollow: following a TTY container delivers lines written
// after the call began, on the console stream, without carriage returns.
func TestTTYLogsFollow(t *testing.T) {
	d := connected(t)
	name := uniqueName("ttyf")
	t.Cleanup(func() { forceRemove(name) })
	dockerCLI(t, "run", "-d", "-t", "--name", name, "--network", "none", TestImage,
		"sh", "-c", "i=0; while :; do i=$((i+1)); echo tick$i; sleep 0.3; done")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	started := time.Now()
	var lines []drivers.LogLine
	err := d.Logs(ctx, name, drivers.LogOptions{Lines: 1, Follow: true}, func(l drivers.LogLine) error {
		lines = append(lines, l)
		if len(lines) == 4 {
			cancel()
		}
		return nil
	})
	if err != nil {
		t.Fatalf("Logs --follow: %v", err)
	}
	if len(lines) < 4 {
		t.Fatalf("followed %d lines before the deadline: %+v, want 4", len(lines), lines)
	}
	for i, l := range lines[:4] {
		if l.Stream != "console" || !strings.HasPrefix(l.Line, "tick") || strings.Contains(l.Line, "\r") || l.Time.IsZero() {
			t.Errorf("line %d = %+v, want tickN on console with a time", i, l)
		}
		if i > 0 && l.Line == lines[i-1].Line {
			t.Errorf("line %d repeats %q", i, l.Line)
		}
	}
	// Lines 2..4 were written after the call began: they were followed.
	if last := lines[3].Time; !last.After(started) {
		t.Errorf("the 4th line is from %v, before the call at %v: not followed", last, started)
	}
}

// TestMetricsMany samples several containers in one call.
func TestMetricsMany(t *testing.T) {
	d := connected(t)
	var names []string
	ctx := testCtx(t, 60*time.Second)
	for i := 0; i < 3; i++ {
		n := uniqueName("many")
		createT(t, d, busybox(t, n, "sleep 60"))
		if _, err := d.Start(ctx, n); err != nil {
			t.Fatal(err)
		}
		names = append(names, n)
	}
	names = append(names, uniqueName("absent"))
	res := d.MetricsMany(ctx, names)
	for i, r := range res[:3] {
		if r.Name != names[i] || r.Err != nil || r.Usage.MemoryMB <= 0 {
			t.Errorf("result %d: %+v", i, r)
		}
	}
	if classify(res[3].Err) != drivers.NotFound {
		t.Errorf("absent container: %v, want not_found", res[3].Err)
	}
}

// TestLocalStatsMatchAPI: the cgroup fast path reads the same counters
// the stats API reports: sampled between two API samples, each counter
// lies between them.
func TestLocalStatsMatchAPI(t *testing.T) {
	local := connected(t)
	var off error
	if local.cgroups == nil {
		off = fmt.Errorf("the driver's daemon %q is not a local socket", local.opts.Host)
	}
	testenv.Require(t, "the local cgroup stats source", off, "run these tests against the local dockerd (unset DOCKER_HOST)")
	api := New(Options{HostID: "test-host", StatsSource: StatsAPI})
	ctx := testCtx(t, 60*time.Second)
	if err := api.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { api.Close() })
	name := uniqueName("stats")
	createT(t, local, busybox(t, name, "while :; do dd if=/dev/zero of=/tmp/f bs=64k count=16 2>/dev/null; sleep 0.2; done"))
	if _, err := local.Start(ctx, name); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	a, err := api.Metrics(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	l, err := local.Metrics(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := local.cgroups.cached(name); !ok {
		t.Fatal("the local sample did not come from the cgroup")
	}
	b, err := api.Metrics(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	between := func(what string, x, lo, hi uint64) {
		if x < lo || x > hi {
			t.Errorf("%s: local %d not within the API's %d..%d", what, x, lo, hi)
		}
	}
	between("cpu time", l.Counters.CPUTimeNs, a.Counters.CPUTimeNs, b.Counters.CPUTimeNs)
	between("net rx", l.Counters.NetRxBytes, a.Counters.NetRxBytes, b.Counters.NetRxBytes)
	between("disk write", l.Counters.DiskWriteBytes, a.Counters.DiskWriteBytes, b.Counters.DiskWriteBytes)
	if d := math.Abs(l.MemoryMB - a.MemoryMB); d > 4 {
		t.Errorf("memory: local %.2f MB, API %.2f MB", l.MemoryMB, a.MemoryMB)
	}
	if l.Measured != a.Measured {
		t.Errorf("measured: local %v, API %v", l.Measured.Names(), a.Measured.Names())
	}
	// A stopped container is not sampled from a stale cgroup.
	if _, err := local.Stop(ctx, name, drivers.StopOptions{Force: true}); err != nil {
		t.Fatal(err)
	}
	u, err := local.Metrics(ctx, name)
	if err != nil || u.CPUPercent != 0 || u.MemoryMB != 0 {
		t.Errorf("stopped: %+v (%v), want an empty sample", u, err)
	}
}

// TestLimitsMemoryAndSwap: raising memory above the swap limit set at
// create works (both move together), and so does lowering it.
func TestLimitsMemoryAndSwap(t *testing.T) {
	d := connected(t)
	name := uniqueName("lim")
	tmpl := busybox(t, name, "trap 'exit 0' TERM; while :; do sleep 1 & wait $!; done")
	tmpl.Resources = drivers.ResourceLimits{MemoryMB: 32}
	createT(t, d, tmpl)
	ctx := testCtx(t, 30*time.Second)
	if _, err := d.Start(ctx, name); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		set  drivers.ResourceLimits
		want drivers.ResourceLimits
	}{
		{drivers.ResourceLimits{MemoryMB: 256}, drivers.ResourceLimits{MemoryMB: 256}},
		{drivers.ResourceLimits{MemoryMB: 48}, drivers.ResourceLimits{MemoryMB: 48}},
		{drivers.ResourceLimits{CPUCores: 1.5, PIDs: 30}, drivers.ResourceLimits{MemoryMB: 48, CPUCores: 1.5, PIDs: 30}},
	} {
		got, err := d.SetLimits(ctx, name, c.set)
		if err != nil {
			t.Fatalf("SetLimits(%+v): %v", c.set, err)
		}
		if got != c.want {
			t.Errorf("SetLimits(%+v) = %+v, want %+v", c.set, got, c.want)
		}
		swap := dockerCLI(t, "inspect", "-f", "{{.HostConfig.Memory}} {{.HostConfig.MemorySwap}}", name)
		if want := fmt.Sprintf("%d %d", c.want.MemoryMB<<20, c.want.MemoryMB<<20); swap != want {
			t.Errorf("after %+v: memory/swap %q, want %q", c.set, swap, want)
		}
	}
	for _, bad := range []drivers.ResourceLimits{{DiskGB: 1}, {NetworkMbps: 10}} {
		if _, err := d.SetLimits(ctx, name, bad); classify(err) != drivers.Unsupported {
			t.Errorf("SetLimits(%+v): %v, want unsupported", bad, err)
		}
	}
}

// proxy forwards a unix socket to the Docker socket and can cut every
// connection, to break the event stream without touching the daemon.
type proxy struct {
	ln    net.Listener
	mu    sync.Mutex
	conns []net.Conn
	// delayCreate holds the reply to each container create this long.
	delayCreate time.Duration
}

func startProxy(t *testing.T, delayCreate time.Duration) (*proxy, string) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "d.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{ln: ln, delayCreate: delayCreate}
	t.Cleanup(func() { ln.Close(); p.cut() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("unix", "/var/run/docker.sock")
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, up)
			p.mu.Unlock()
			held := make(chan struct{}, 1)
			go func() {
				buf := make([]byte, 64<<10)
				for {
					n, err := c.Read(buf)
					if n > 0 {
						if p.delayCreate > 0 && bytes.Contains(buf[:n], []byte("/containers/create")) {
							select {
							case held <- struct{}{}:
							default:
							}
						}
						if _, werr := up.Write(buf[:n]); werr != nil {
							break
						}
					}
					if err != nil {
						break
					}
				}
				up.Close()
			}()
			go func() {
				buf := make([]byte, 64<<10)
				for {
					n, err := up.Read(buf)
					if n > 0 {
						select {
						case <-held:
							time.Sleep(p.delayCreate)
						default:
						}
						if _, werr := c.Write(buf[:n]); werr != nil {
							break
						}
					}
					if err != nil {
						break
					}
				}
				c.Close()
			}()
		}
	}()
	return p, "unix://" + sock
}

func (p *proxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

// TestWatchReconnectMissesNothing: when the event stream breaks, Watch
// returns unavailable; the next Watch reports what happened meanwhile.
func TestWatchReconnectMissesNothing(t *testing.T) {
	requireDocker(t)
	px, host := startProxy(t, 0)
	d := New(Options{Host: host, HostID: "test-host"})
	if err := d.Connect(testCtx(t, 30*time.Second)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	name := uniqueName("recon")
	createT(t, d, busybox(t, name, "trap 'exit 0' TERM; while :; do sleep 1 & wait $!; done"))

	rec := &recorder{}
	done := make(chan error, 1)
	go func() { done <- d.Watch(context.Background(), rec.emit) }()
	dockerCLI(t, "start", name)
	testenv.Eventually(t, 10*time.Second, func() error {
		_, err := rec.find(func(ev drivers.Event) bool { return ev.Instance == name && ev.Type == drivers.EventStarted })
		return err
	})
	px.cut()
	select {
	case err := <-done:
		if classify(err) != drivers.Unavailable {
			t.Fatalf("Watch after the stream broke: %v, want unavailable", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Watch did not return when its stream broke")
	}
	// Meanwhile, out of band:
	dockerCLI(t, "stop", "-t", "5", name)
	rec2, _ := watch(t, d)
	testenv.Eventually(t, 10*time.Second, func() error {
		_, err := rec2.find(func(ev drivers.Event) bool { return ev.Instance == name && ev.State == drivers.StateStopped })
		return err
	})
}

// TestCreateDeadlineLeavesNothing: a create whose caller gives up while
// the daemon is still creating removes the container it made.
func TestCreateDeadlineLeavesNothing(t *testing.T) {
	requireDocker(t)
	_, host := startProxy(t, 1500*time.Millisecond)
	d := New(Options{Host: host, HostID: "test-host"})
	if err := d.Connect(testCtx(t, 30*time.Second)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	name := uniqueName("late")
	t.Cleanup(func() { forceRemove(name) })
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	_, err := d.Create(ctx, busybox(t, name, "sleep 60"))
	if classify(err) != drivers.Timeout {
		t.Fatalf("Create past its deadline: %v (code %s), want timeout", err, classify(err))
	}
	// It is gone by the time Create returned …
	if out := dockerCLI(t, "ps", "-a", "-q", "--filter", "name=^"+name+"$"); out != "" {
		t.Errorf("Create left %s behind: %s", name, out)
	}
	// … though the daemon did create it (only its reply was held back).
	until := strconv.FormatInt(time.Now().Unix()+1, 10)
	evs := dockerCLI(t, "events", "--since", "60s", "--until", until, "--filter", "container="+name, "--format", "{{.Action}}")
	if !strings.Contains(evs, "create") || !strings.Contains(evs, "destroy") {
		t.Errorf("daemon events for %s: %q, want a create (proving the daemon made it) and a destroy", name, evs)
	}
}

// TestNativeEventMapping: health checks, pause/unpause and a crash made
// outside subbus map to the documented events.
func TestNativeEventMapping(t *testing.T) {
	d := connected(t)
	rec, _ := watch(t, d)
	healthy, crash := uniqueName("hc"), uniqueName("crash")
	t.Cleanup(func() { forceRemove(healthy); forceRemove(crash) })
	// The watcher must be subscribed before the changes happen.
	time.Sleep(300 * time.Millisecond)
	dockerCLI(t, "run", "-d", "--name", healthy, "--network", "none", "--health-cmd", "true", "--health-interval", "1s",
		TestImage, "sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1 & wait $!; done")
	dockerCLI(t, "run", "-d", "--name", crash, "--network", "none", TestImage, "sh", "-c", "exit 3")
	find := func(what string, match func(drivers.Event) bool) drivers.Event {
		t.Helper()
		var ev drivers.Event
		testenv.Eventually(t, 15*time.Second, func() (err error) {
			ev, err = rec.find(match)
			if err != nil {
				return fmt.Errorf("%s: %w", what, err)
			}
			return nil
		})
		return ev
	}
	ev := find("appeared", func(ev drivers.Event) bool { return ev.Instance == healthy && ev.Type == drivers.EventAppeared })
	if ev.Details["managed"] != "false" {
		t.Errorf("appeared event of a hand-made container: %+v", ev)
	}
	find("health", func(ev drivers.Event) bool {
		return ev.Instance == healthy && ev.Type == drivers.EventStateChanged && ev.Details["health"] == "healthy"
	})
	ev = find("crash", func(ev drivers.Event) bool { return ev.Instance == crash && ev.Type == drivers.EventFailed })
	if ev.Details["exit_code"] != "3" || ev.Err == nil || ev.Details["oom"] != "" {
		t.Errorf("crash event %+v", ev)
	}
	dockerCLI(t, "pause", healthy)
	find("paused", func(ev drivers.Event) bool { return ev.Instance == healthy && ev.State == drivers.StatePaused })
	dockerCLI(t, "unpause", healthy)
	find("unpaused", func(ev drivers.Event) bool {
		return ev.Instance == healthy && ev.Details["action"] == "unpause" && ev.State == drivers.StateRunning
	})
	i, err := d.Get(testCtx(t, 10*time.Second), healthy)
	if err != nil || !strings.Contains(i.NativeState, "healthy") || i.Managed {
		t.Errorf("Get of the health-checked container: %+v %v", i, err)
	}
}
