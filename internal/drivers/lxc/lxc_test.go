package lxc

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/internal/manager/driverstest"
	"github.com/subbus/subbus/internal/testenv"
)

// testImage is the busybox image scripts/setup/lxd.sh imports offline.
const testImage = "subbus-busybox"

// probeTimeout bounds the probe that decides whether LXD is there. It is
// generous: a busy LXD under CI load can take tens of seconds to answer,
// and a slow answer must not turn into a failure (docs/lxc.md, "Tests").
const probeTimeout = 60 * time.Second

const howToStart = "bash scripts/setup/lxd.sh (starts `lxd --group root`, preseeds a dir pool, imports " + testImage + ")"

// testNet is the bridge network created for the package's tests (no
// addresses, no NAT: nothing routes anywhere), removed by TestMain.
var testNet struct {
	once sync.Once
	name string
	err  error
}

// TestMain runs the package's tests holding an exclusive lock on this
// machine, so that two test processes (a second `go test` of this package,
// an engineer's run beside CI's) never drive LXD at once: LXD 5.0 can stall
// for minutes when one creates bridges while another starts containers, and
// the start's pre-start hook then times out (docs/lxc.md, "Tests").
func TestMain(m *testing.M) {
	unlock := lockLXDTests()
	code := m.Run()
	unlock()
	if testNet.name != "" {
		_ = exec.Command("lxc", "network", "delete", testNet.name).Run()
	}
	os.Exit(code)
}

// lockLXDTests takes the machine-wide lock of the LXD tests, waiting
// while another process holds it. Without a lock file it runs unlocked.
func lockLXDTests() (unlock func()) {
	path := filepath.Join(os.TempDir(), "subbus-lxd-tests.lock")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o666)
	if err != nil {
		fmt.Fprintf(os.Stderr, "lxc tests: no lock file %s (%v); running unlocked\n", path, err)
		return func() {}
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		fmt.Fprintf(os.Stderr, "lxc tests: another process is testing against LXD; waiting for %s\n", path)
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
			fmt.Fprintf(os.Stderr, "lxc tests: lock %s: %v; running unlocked\n", path, err)
		}
	}
	return func() { _ = f.Close() }
}

// requireLXD returns a connected driver, or skips (fails in CI) when LXD or
// the test image is missing.
func requireLXD(t *testing.T) *Driver {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), probeTimeout)
	defer cancel()
	d := New(DefaultOptions())
	err := d.Connect(ctx)
	if err == nil {
		c, _, _ := d.conn()
		_, err = c.query(ctx, http.MethodGet, "/1.0/images/aliases/"+testImage, nil, nil)
	}
	testenv.Require(t, "LXD with the "+testImage+" image", err, howToStart)
	t.Cleanup(func() { _ = d.Close() })
	requireCLI(t) // the tests make networks, profiles and outside changes with it
	return d
}

func randName(prefix string) string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return prefix + "-" + hex.EncodeToString(b)
}

// testNetwork returns the shared internal test network, creating it once.
func testNetwork(t *testing.T) string {
	t.Helper()
	testNet.once.Do(func() {
		name := randName("sbt")
		out, err := exec.Command("lxc", "network", "create", name,
			"ipv4.address=none", "ipv6.address=none", "ipv4.nat=false", "ipv6.nat=false").CombinedOutput()
		if err != nil {
			testNet.err = fmt.Errorf("lxc network create: %v: %s", err, out)
			return
		}
		testNet.name = name
	})
	if testNet.err != nil {
		t.Fatal(testNet.err)
	}
	return testNet.name
}

type harness struct{ t *testing.T }

func (h *harness) MakeDriver(ctx context.Context) (drivers.Driver, error) {
	return New(DefaultOptions()), nil
}

func (h *harness) Template(name string) drivers.InstanceTemplate {
	return drivers.InstanceTemplate{
		Name:        name,
		BaseImage:   testImage,
		Environment: map[string]string{"SUBBUS_CONFORMANCE": "1"},
		Metadata:    map[string]string{"suite": "conformance"},
	}
}

// StubbornTemplate: the test image's init ignores the stop signals with
// SUBBUS_IGNORE_STOP=1 (scripts/setup/lxd.sh).
func (h *harness) StubbornTemplate(name string) drivers.InstanceTemplate {
	t := h.Template(name)
	t.Environment["SUBBUS_IGNORE_STOP"] = "1"
	return t
}

// Unreachable is a driver pointed at a socket path where nothing listens.
func (h *harness) Unreachable(ctx context.Context) (drivers.Driver, error) {
	return New(Options{Socket: filepath.Join(h.t.TempDir(), "none.socket")}), nil
}

func (h *harness) Network() string { return testNetwork(h.t) }
func (h *harness) Close()          {}

func TestConformance(t *testing.T) {
	requireLXD(t)
	all := drivers.Capabilities{Exec: true, Logs: true, Limits: true, Snapshots: true, Clone: true, Networks: true, Events: true,
		LogOrder: true}
	driverstest.RunConformanceTests(t,
		func(ctx context.Context, t *testing.T) (driverstest.Harness, error) {
			testNetwork(t) // exists before the suite lists networks
			return &harness{t: t}, nil
		},
		driverstest.WithCapabilities(all),
		driverstest.WithOperationTimeout(90*time.Second),
		driverstest.WithSettleTimeout(30*time.Second),
		driverstest.WithStopTimeout(10*time.Second),
	)
}

// recorder records the bodies of the requests a driver sends.
type recorder struct {
	next http.RoundTripper
	mu   sync.Mutex
	reqs []recorded
}

type recorded struct {
	method, path, body string
	status             int // 0 when the request failed
}

func (r *recorder) RoundTrip(req *http.Request) (*http.Response, error) {
	var body []byte
	if req.Body != nil {
		body, _ = io.ReadAll(req.Body)
		req.Body = io.NopCloser(bytes.NewReader(body))
	}
	resp, err := r.next.RoundTrip(req)
	status := 0
	if err == nil {
		status = resp.StatusCode
	}
	r.mu.Lock()
	r.reqs = append(r.reqs, recorded{req.Method, req.URL.Path, string(body), status})
	r.mu.Unlock()
	return resp, err
}

func (r *recorder) matching(method, pathSuffix string) []recorded {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []recorded
	for _, q := range r.reqs {
		if q.method == method && strings.HasSuffix(q.path, pathSuffix) {
			out = append(out, q)
		}
	}
	return out
}

// record makes d's requests go through a recorder.
func record(d *Driver) *recorder {
	c, _, _ := d.conn()
	r := &recorder{next: c.http.Transport}
	c.http.Transport = r
	return r
}

// launch creates and starts a test container with extra environment,
// force-deleted at the end of the test.
func launch(t *testing.T, d *Driver, env map[string]string) string {
	t.Helper()
	name := randName("sbt")
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		if _, err := d.Delete(ctx, name, drivers.DeleteOptions{Force: true}); err != nil {
			t.Errorf("cleanup %s: %v", name, err)
		}
	})
	if _, err := d.Create(ctx, drivers.InstanceTemplate{Name: name, BaseImage: testImage, Environment: env}); err != nil {
		t.Fatalf("Create: %v", err)
	}
	if _, err := d.Start(ctx, name); err != nil {
		t.Fatalf("Start: %v", err)
	}
	return name
}

// waitConsole polls the console log until it contains want.
func waitConsole(t *testing.T, d *Driver, name, want string) {
	t.Helper()
	testenv.Eventually(t, 20*time.Second, func() error {
		b, err := d.consoleLog(context.Background(), name)
		if err != nil {
			return err
		}
		if !strings.Contains(string(b), want) {
			return fmt.Errorf("console of %s lacks %q", name, want)
		}
		return nil
	})
}

// TestStopTimeoutSemantics pins what stop sends to LXD and what happens:
// a graceful stop asks init to shut down and kills it after the timeout
// when it does not; a force stop kills at once; "timeout":0 is never sent.
func TestStopTimeoutSemantics(t *testing.T) {
	d := requireLXD(t)
	rec := record(d)
	stateBodies := func(name string) []string {
		var out []string
		for _, r := range rec.matching(http.MethodPut, "/1.0/instances/"+name+"/state") {
			if strings.Contains(r.body, `"action":"stop"`) {
				out = append(out, r.body)
			}
		}
		return out
	}
	ctx := func() context.Context {
		c, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		t.Cleanup(cancel)
		return c
	}

	t.Run("GracefulHonoured", func(t *testing.T) {
		name := launch(t, d, nil)
		waitConsole(t, d, name, "subbus-conformance "+name)
		begin := time.Now()
		changed, err := d.Stop(ctx(), name, drivers.StopOptions{Timeout: 20 * time.Second})
		if err != nil || !changed {
			t.Fatalf("Stop = %v, %v; want true, nil", changed, err)
		}
		if el := time.Since(begin); el > 10*time.Second {
			t.Errorf("a graceful stop that init honours took %v", el)
		}
		waitConsole(t, d, name, "subbus-init: stopping") // init saw the signal: not killed
		bodies := stateBodies(name)
		if len(bodies) != 1 || !strings.Contains(bodies[0], `"timeout":20`) || !strings.Contains(bodies[0], `"force":false`) {
			t.Errorf("state requests %q, want one graceful stop with timeout 20", bodies)
		}
	})

	t.Run("GracefulIgnoredIsKilled", func(t *testing.T) {
		name := launch(t, d, map[string]string{"SUBBUS_IGNORE_STOP": "1"})
		waitConsole(t, d, name, "subbus-conformance "+name)
		begin := time.Now()
		changed, err := d.Stop(ctx(), name, drivers.StopOptions{Timeout: 2 * time.Second})
		el := time.Since(begin)
		if err != nil || !changed {
			t.Fatalf("Stop = %v, %v; want true, nil", changed, err)
		}
		if el < 2*time.Second {
			t.Errorf("stop returned after %v, before the 2s graceful timeout", el)
		}
		in, err := d.Get(ctx(), name)
		if err != nil || in.State != drivers.StateStopped {
			t.Fatalf("after Stop: %+v, %v; want stopped", in.State, err)
		}
		bodies := stateBodies(name)
		if len(bodies) != 2 || !strings.Contains(bodies[0], `"timeout":2,`) || !strings.Contains(bodies[1], `"force":true`) {
			t.Errorf("state requests %q, want a graceful stop (timeout 2) then a forced one", bodies)
		}
	})

	t.Run("ForceKillsAtOnce", func(t *testing.T) {
		name := launch(t, d, map[string]string{"SUBBUS_IGNORE_STOP": "1"})
		waitConsole(t, d, name, "subbus-conformance "+name)
		begin := time.Now()
		changed, err := d.Stop(ctx(), name, drivers.StopOptions{Force: true, Timeout: time.Minute})
		if err != nil || !changed {
			t.Fatalf("force Stop = %v, %v; want true, nil", changed, err)
		}
		if el := time.Since(begin); el > 10*time.Second {
			t.Errorf("force stop took %v", el)
		}
		bodies := stateBodies(name)
		if len(bodies) != 1 || !strings.Contains(bodies[0], `"force":true`) || strings.Contains(bodies[0], "timeout") {
			t.Errorf("state requests %q, want one forced stop without a timeout", bodies)
		}
	})

	t.Run("NoZeroTimeout", func(t *testing.T) {
		for _, r := range rec.matching(http.MethodPut, "/state") {
			if strings.Contains(r.body, `"timeout":0`) || strings.Contains(r.body, `"timeout":-`) {
				t.Errorf("request %s %s sent %s", r.method, r.path, r.body)
			}
		}
	})
}

// initPID is the host PID of the instance's init (0 when stopped).
func initPID(t *testing.T, d *Driver, name string) int {
	t.Helper()
	c, _, _ := d.conn()
	var st struct {
		Pid int `json:"pid"`
	}
	if _, err := c.query(context.Background(), http.MethodGet, "/1.0/instances/"+name+"/state", nil, &st); err != nil {
		t.Fatal(err)
	}
	return st.Pid
}

// TestRestartIgnoringStop: a graceful restart of an instance whose init
// ignores the stop signal still completes, by the forced restart after
// the graceful timeout: the instance runs again under a new init.
func TestRestartIgnoringStop(t *testing.T) {
	d := requireLXD(t)
	rec := record(d)
	name := launch(t, d, map[string]string{"SUBBUS_IGNORE_STOP": "1"})
	waitConsole(t, d, name, "subbus-conformance "+name)
	before := initPID(t, d, name)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	begin := time.Now()
	if err := d.Restart(ctx, name, drivers.StopOptions{Timeout: 2 * time.Second}); err != nil {
		t.Fatalf("Restart of an instance ignoring the stop signal: %v", err)
	}
	if el := time.Since(begin); el < 2*time.Second {
		t.Errorf("restart returned after %v, before the 2s graceful timeout", el)
	}
	in, err := d.Get(ctx, name)
	if err != nil || in.State != drivers.StateRunning {
		t.Fatalf("after Restart: %+v, %v; want running", in.State, err)
	}
	if after := initPID(t, d, name); after == 0 || after == before {
		t.Errorf("init PID %d before, %d after: the instance was not restarted", before, after)
	}
	var bodies []string
	for _, r := range rec.matching(http.MethodPut, "/1.0/instances/"+name+"/state") {
		if !strings.Contains(r.body, `"action":"start"`) { // launch's start
			bodies = append(bodies, r.body)
		}
	}
	if len(bodies) != 2 || !strings.Contains(bodies[0], `"action":"restart","timeout":2,`) ||
		!strings.Contains(bodies[1], `"action":"restart"`) || !strings.Contains(bodies[1], `"force":true`) {
		t.Errorf("state requests %q, want a graceful restart (timeout 2) then a forced one", bodies)
	}
}

// TestCreateDefaults: a template without an image gets lxc.default_image,
// and the instance gets lxc.default_profile (here a copy of "default" with
// an environment variable the container sees); with neither an image nor
// a default image, create is invalid_argument.
func TestCreateDefaults(t *testing.T) {
	requireLXD(t)
	profile := randName("sbt-prof")
	lxcCLI(t, "profile", "copy", "default", profile)
	t.Cleanup(func() { _ = exec.Command("lxc", "profile", "delete", profile).Run() })
	lxcCLI(t, "profile", "set", profile, "environment.SUBBUS_PROFILE", profile)

	o := DefaultOptions()
	o.DefaultImage, o.DefaultProfile = testImage, profile
	d := New(o)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	if err := d.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Close() })
	name := randName("sbt-def")
	t.Cleanup(func() { _, _ = d.Delete(context.Background(), name, drivers.DeleteOptions{Force: true}) })
	in, err := d.Create(ctx, drivers.InstanceTemplate{Name: name})
	if err != nil {
		t.Fatalf("Create without an image: %v", err)
	}
	if in.Image != testImage {
		t.Errorf("image %q, want the default %q", in.Image, testImage)
	}
	c, _, _ := d.conn()
	var raw struct {
		Profiles []string `json:"profiles"`
	}
	if _, err := c.query(ctx, http.MethodGet, "/1.0/instances/"+name, nil, &raw); err != nil {
		t.Fatal(err)
	}
	if strings.Join(raw.Profiles, ",") != profile {
		t.Errorf("profiles %q, want just %q", raw.Profiles, profile)
	}
	if _, err := d.Start(ctx, name); err != nil {
		t.Fatalf("Start: %v", err)
	}
	var out, errb strings.Builder
	if code, err := d.Exec(ctx, name, drivers.ExecRequest{Command: []string{"sh", "-c", `echo "$SUBBUS_PROFILE"`}}, &out, &errb); err != nil || code != 0 {
		t.Fatalf("Exec: %d %v %s", code, err, errb.String())
	}
	if out.String() != profile+"\n" {
		t.Errorf("the container sees SUBBUS_PROFILE=%q, want %q from the default profile", out.String(), profile)
	}

	bare := New(DefaultOptions())
	if err := bare.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = bare.Close() })
	if _, err := bare.Create(ctx, drivers.InstanceTemplate{Name: randName("sbt-def")}); classify(err) != drivers.InvalidArgument {
		t.Errorf("Create with no image and no default image: %v, want invalid_argument", err)
	}
}

func TestStopBody(t *testing.T) {
	short, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	cases := []struct {
		name    string
		ctx     context.Context
		opts    drivers.StopOptions
		want    string
		wantErr drivers.Code
	}{
		{"force", context.Background(), drivers.StopOptions{Force: true}, `{"action":"stop","force":true,"stateful":false}`, 0},
		{"force ignores timeout", context.Background(), drivers.StopOptions{Force: true, Timeout: time.Minute}, `{"action":"stop","force":true,"stateful":false}`, 0},
		{"graceful", context.Background(), drivers.StopOptions{Timeout: 10 * time.Second}, `{"action":"stop","timeout":10,"force":false,"stateful":false}`, 0},
		{"sub-second rounds up", context.Background(), drivers.StopOptions{Timeout: 300 * time.Millisecond}, `{"action":"stop","timeout":1,"force":false,"stateful":false}`, 0},
		{"deadline leaves room to kill", short, drivers.StopOptions{Timeout: time.Minute}, `{"action":"stop","timeout":1,"force":false,"stateful":false}`, 0},
		{"no timeout, no force", context.Background(), drivers.StopOptions{}, "", drivers.InvalidArgument},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b, err := stopBody(c.ctx, "stop", c.opts)
			if c.wantErr != 0 {
				if classify(err) != c.wantErr {
					t.Fatalf("err = %v, want %s", err, c.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := mustJSON(t, b)
			if c.name == "deadline leaves room to kill" {
				// 5s deadline minus 3s for the kill: 1 or 2 seconds.
				if !strings.Contains(got, `"timeout":1,`) && !strings.Contains(got, `"timeout":2,`) {
					t.Errorf("body %s, want a timeout of 1-2s", got)
				}
				return
			}
			if got != c.want {
				t.Errorf("body %s, want %s", got, c.want)
			}
		})
	}
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestGetRuntimeFields: get of a running container reports its init's
// host PID (the state endpoint's) and its start time (LXD's
// last_used_at, stamped at this start); once stopped, neither.
func TestGetRuntimeFields(t *testing.T) {
	d := requireLXD(t)
	before := time.Now().Add(-2 * time.Second) // LXD's clock is this host's; its stamp has second precision
	name := launch(t, d, map[string]string{"FD_MODE": "x"})
	after := time.Now().Add(2 * time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	in, err := d.Get(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	if pid := initPID(t, d, name); in.PID == 0 || in.PID != pid {
		t.Errorf("PID %d, want the state's %d", in.PID, pid)
	}
	if in.StartedAt.Before(before) || in.StartedAt.After(after) {
		t.Errorf("StartedAt %v, want between %v and %v", in.StartedAt, before, after)
	}
	if in.Environment["FD_MODE"] != "x" {
		t.Errorf("Environment %v lacks FD_MODE=x", in.Environment)
	}
	if _, err := d.Stop(ctx, name, drivers.StopOptions{Timeout: time.Second, Force: true}); err != nil {
		t.Fatal(err)
	}
	in, err = d.Get(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	if in.PID != 0 || !in.StartedAt.IsZero() {
		t.Errorf("stopped: PID %d, StartedAt %v, want neither", in.PID, in.StartedAt)
	}
}
