package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"github.com/subbus/subbus/internal/testenv"
)

// binDir holds the binaries the tests build, once per run; it is
// world-readable so tests can run them as other users.
var (
	binDir  string
	binMu   sync.Mutex
	binOnce = map[string]string{}
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "security-bin-")
	if err == nil {
		err = os.Chmod(dir, 0o755)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// buildBin builds the command in pkg ("." for the worker, "../subbus")
// once per test run and returns its path.
func buildBin(t *testing.T, pkg string) string {
	t.Helper()
	binMu.Lock()
	defer binMu.Unlock()
	if p, ok := binOnce[pkg]; ok {
		return p
	}
	name := filepath.Base(pkg)
	if pkg == "." {
		name = "worker"
	}
	bin := filepath.Join(binDir, name)
	out, err := exec.Command("go", "build", "-o", bin, pkg).CombinedOutput()
	if err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, out)
	}
	binOnce[pkg] = bin
	return bin
}

// buildWorker builds the worker binary (once per test run).
func buildWorker(t *testing.T) string { return buildBin(t, ".") }

func writeConfig(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "substrate_config.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// isolatedEnv keeps the host's nats context and SUBBUS__ overrides out.
func isolatedEnv(t *testing.T) []string {
	env := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir(), "XDG_CONFIG_HOME=" + t.TempDir(), "XDG_STATE_HOME=" + t.TempDir()}
	return env
}

func TestCheckConfigRejectsBadConfig(t *testing.T) {
	bin := buildWorker(t)
	tests := []struct {
		name, config, args, want string
	}{
		{"unknown key", "worker:\n  bogus: 1\n", "", "bogus"},
		{"bad host", "worker:\n  host: a.b\n", "", "worker.host"},
		{"bad flag host", "", "--host=a.b", "host"},
		{"bad listen", "nats:\n  listen: nowhere\n", "", "nats.listen"},
		{"unknown driver", "", "--drivers=nosuch", "unknown driver"},
		{"bad prometheus listen", "worker:\n  prometheus_listen: nowhere\n", "", "worker.prometheus_listen"},
		{"bad flag prometheus listen", "", "--prometheus-listen=:-1", "worker.prometheus_listen"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := []string{"--check-config", "--log-format=json", "--config", writeConfig(t, tt.config)}
			if tt.args != "" {
				args = append(args, tt.args)
			}
			cmd := exec.Command(bin, args...)
			cmd.Env = isolatedEnv(t)
			out, err := cmd.CombinedOutput()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 2 {
				t.Fatalf("exit %v, want 2\n%s", err, out)
			}
			if !strings.Contains(string(out), tt.want) {
				t.Fatalf("output does not name %q:\n%s", tt.want, out)
			}
		})
	}
}

func freePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// runningBinary is the worker binary running with the embedded server.
type runningBinary struct {
	cmd  *exec.Cmd
	done chan error // Wait's result
	logs *bytes.Buffer
	nc   *nats.Conn // connected to the embedded server once it answers
	cred string     // the local credential (nkey seed) the worker wrote
}

// startBinary runs the worker binary for host with the process driver and
// the embedded server on a free port (extra is appended to the config, env
// to its environment, args to its arguments), and returns once its list
// endpoint answers. The process is killed at cleanup if the test did not
// end it.
func startBinary(t *testing.T, host, extra string, env []string, args ...string) *runningBinary {
	t.Helper()
	bin := buildWorker(t)
	port := freePort(t)
	cred := filepath.Join(t.TempDir(), "client.nk")
	cfg := writeConfig(t, fmt.Sprintf("nats:\n  listen: 127.0.0.1:%d\n  data_dir: %s\n  credential: %s\nprocess:\n  state_dir: %s\n  cgroups: \"off\"\n",
		port, t.TempDir(), cred, t.TempDir())+extra)
	r := &runningBinary{done: make(chan error, 1), logs: &bytes.Buffer{}, cred: cred}
	r.cmd = exec.Command(bin, append([]string{"--config", cfg, "--host", host, "--drivers", "process", "--log-format", "json"}, args...)...)
	r.cmd.Env = append(isolatedEnv(t), env...)
	r.cmd.Stderr = r.logs
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { r.done <- r.cmd.Wait() }()
	t.Cleanup(func() {
		if r.cmd.ProcessState == nil {
			_ = r.cmd.Process.Kill()
			<-r.done
		}
	})
	url := fmt.Sprintf("nats://127.0.0.1:%d", port)
	testenv.Eventually(t, 30*time.Second, func() error {
		var err error
		if r.nc == nil {
			opt, err := nats.NkeyOptionFromSeed(cred)
			if err != nil {
				return err
			}
			if r.nc, err = nats.Connect(url, opt); err != nil {
				return err
			}
		}
		msg, err := r.nc.Request("substrate.process."+host+".list", nil, 2*time.Second)
		if err != nil {
			return err
		}
		if !bytes.Contains(msg.Data, []byte(`"result":[`)) {
			return fmt.Errorf("reply %s", msg.Data)
		}
		return nil
	})
	t.Cleanup(r.nc.Close)
	return r
}

// TestWorkerEmbeddedServerAndSignal runs the binary with no NATS settings:
// it starts the embedded server, answers requests, and exits 0 after
// SIGTERM, stopping the embedded server.
func TestWorkerEmbeddedServerAndSignal(t *testing.T) {
	r := startBinary(t, "cmdtest", "", nil)
	cmd, done, logs := r.cmd, r.done, r.logs
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("exit: %v\n%s", err, logs.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("worker did not exit after SIGTERM\n%s", logs.String())
	}
	for _, want := range []string{"embedded NATS server started", "worker stopped", "embedded NATS server stopped", `"op":"list"`, `"request_id"`} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("logs lack %q:\n%s", want, logs.String())
		}
	}
}

// TestSecondSignalForcesExit: with a request in flight the first SIGTERM
// waits for it (grace period); a second one exits at once with 130.
func TestSecondSignalForcesExit(t *testing.T) {
	r := startBinary(t, "sigtest", "worker:\n  grace_period: 60s\n", nil)
	cmd, done, logs, nc := r.cmd, r.done, r.logs, r.nc
	req := func(op, body string) error {
		msg, err := nc.Request("substrate.process.sigtest."+op, []byte(body), 10*time.Second)
		if err != nil {
			return err
		}
		if c := msg.Header.Get("Nats-Service-Error-Code"); c != "" {
			return fmt.Errorf("%s: %s", op, msg.Data)
		}
		return nil
	}
	name := fmt.Sprintf("sig-%d", time.Now().UnixNano())
	for _, step := range []struct{ op, body string }{
		{"create", fmt.Sprintf(`{"template":{"name":%q,"base_image":"/bin/sleep","command":["/bin/sleep","20"]}}`, name)},
		{"start", fmt.Sprintf(`{"name":%q}`, name)},
	} {
		if err := req(step.op, step.body); err != nil {
			t.Fatal(err)
		}
	}
	// A long exec is in flight. (The instance and the exec'd command end
	// by themselves 20s later: a forced exit leaves instances running, by
	// design.)
	go func() { _ = req("exec", fmt.Sprintf(`{"name":%q,"command":["/bin/sleep","20"]}`, name)) }()
	testenv.Eventually(t, 10*time.Second, func() error {
		msg, err := nc.Request("$SRV.STATS.substrate", nil, 2*time.Second)
		if err != nil {
			return err
		}
		if !bytes.Contains(msg.Data, []byte(`"in_flight":1`)) {
			return fmt.Errorf("exec not in flight: %s", msg.Data)
		}
		return nil
	})
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-done:
		t.Fatalf("exited after the first signal with a request in flight: %v\n%s", err, logs.String())
	case <-time.After(time.Second):
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-done:
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 130 {
			t.Fatalf("exit %v, want 130\n%s", err, logs.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("second signal did not force exit\n%s", logs.String())
	}
}

// TestLocalAuthAndRootRule is the scenario: a worker run by root
// with the embedded server. User nobody running subbus is refused with
// the "ask an administrator" message (exit 7); root with the credential
// creates and starts `/usr/bin/id`, which runs as nobody
// (process.default_user), and asking for root is permission_denied.
func TestLocalAuthAndRootRule(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the scenario needs root (a root worker, subbus run as nobody)")
	}
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		t.Skip("setpriv (util-linux) not installed")
	}
	r := startBinary(t, "authtest", "", nil)
	subbus := buildBin(t, "../subbus")
	url := r.nc.ConnectedUrl()
	run := func(asNobody bool, args ...string) (int, string) {
		var cmd *exec.Cmd
		if asNobody {
			cmd = exec.Command(setpriv, append([]string{"--reuid", "nobody", "--regid", "nogroup", "--clear-groups", "--",
				subbus, "--server", url}, args...)...)
		} else {
			cmd = exec.Command(subbus, append([]string{"--server", url, "--nkey", r.cred}, args...)...)
		}
		cmd.Env = []string{"PATH=/usr/bin:/bin", "HOME=/nonexistent", "XDG_CONFIG_HOME=/nonexistent"}
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		if err != nil && !errors.As(err, &ee) {
			t.Fatalf("%v: %v", args, err)
		}
		return cmd.ProcessState.ExitCode(), string(out)
	}
	name := fmt.Sprintf("id-%d", time.Now().UnixNano())
	for _, args := range [][]string{
		{"process", "create", name, "--image", "/usr/bin/id"},
		{"process", "list"},
		{"workers"},
	} {
		code, out := run(true, args...)
		if code != 7 || !strings.Contains(out, "not authorized - ask an administrator for access to /var/lib/subbus/client.nk or use --creds") {
			t.Fatalf("nobody: subbus %v exited %d:\n%s", args, code, out)
		}
	}
	if code, out := run(false, "process", "create", name, "--image", "/usr/bin/id"); code != 0 {
		t.Fatalf("root create: exit %d\n%s", code, out)
	}
	t.Cleanup(func() { run(false, "process", "delete", name, "--force") })
	if code, out := run(false, "process", "start", name); code != 0 {
		t.Fatalf("root start: exit %d\n%s", code, out)
	}
	testenv.Eventually(t, 10*time.Second, func() error {
		_, out := run(false, "process", "logs", name)
		if !strings.Contains(out, "uid=65534(nobody)") {
			return fmt.Errorf("logs: %s", out)
		}
		return nil
	})
	code, out := run(false, "process", "create", name+"-root", "--image", "/usr/bin/id", "--run-as", "root")
	if code != 7 || !strings.Contains(out, "allow_root") {
		t.Fatalf("create --run-as root: exit %d, want 7 (permission_denied)\n%s", code, out)
	}
}

// TestCreateStreams: `worker --create-streams` (the administrator's step
// for workers with manage_streams: false) connects with the nats section's
// url, nkey and inbox_prefix, creates both streams and the fleet's three
// KV buckets (the leases' TTL is worker.lease_ttl) and exits 0; without a
// server to connect to it is a usage error.
func TestCreateStreams(t *testing.T) {
	bin := buildWorker(t)
	kp, _ := nkeys.CreateUser()
	seed, _ := kp.Seed()
	pub, _ := kp.PublicKey()
	seedFile := filepath.Join(t.TempDir(), "admin.nk")
	if err := os.WriteFile(seedFile, seed, 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(), NoSigs: true, NoLog: true,
		Nkeys: []*server.NkeyUser{{Nkey: pub, Permissions: &server.Permissions{
			Publish:   &server.SubjectPermission{Allow: []string{"$JS.API.>"}},
			Subscribe: &server.SubjectPermission{Allow: []string{"_INBOX_admin.>"}}}}}})
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server did not start")
	}
	t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })

	cfg := writeConfig(t, fmt.Sprintf("nats:\n  url: %s\n  nkey: %s\n  inbox_prefix: _INBOX_admin\nworker:\n  events_max_age: 48h\n  lease_ttl: 45s\n", s.ClientURL(), seedFile))
	cmd := exec.Command(bin, "--create-streams", "--config", cfg, "--log-format", "json")
	cmd.Env = isolatedEnv(t)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("--create-streams: %v\n%s", err, out)
	}
	nc, err := nats.Connect(s.ClientURL(), nats.Nkey(pub, kp.Sign), nats.CustomInboxPrefix("_INBOX_admin"))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	for _, name := range []string{"SUBSTRATE_EVENTS", "SUBSTRATE_METRICS"} {
		st, err := js.Stream(context.Background(), name)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if name == "SUBSTRATE_EVENTS" && st.CachedInfo().Config.MaxAge != 48*time.Hour {
			t.Fatalf("events max age %v, want the configured 48h", st.CachedInfo().Config.MaxAge)
		}
	}
	for _, tc := range []struct {
		bucket string
		ttl    time.Duration
	}{{"SUBSTRATE_INVENTORY", 0}, {"SUBSTRATE_WORKERS", 24 * time.Hour}, {"SUBSTRATE_LEASES", 45 * time.Second}, {"SUBSTRATE_OPS", 24 * time.Hour}} {
		kv, err := js.KeyValue(context.Background(), tc.bucket)
		if err != nil {
			t.Fatalf("%s: %v", tc.bucket, err)
		}
		st, err := kv.Status(context.Background())
		if err != nil || st.TTL() != tc.ttl || st.History() != 1 {
			t.Fatalf("%s: status %+v, %v; want TTL %v, history 1", tc.bucket, st, err, tc.ttl)
		}
	}
	cmd = exec.Command(bin, "--create-streams", "--log-format", "json", "--no-context")
	cmd.Env = isolatedEnv(t)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 2 || !strings.Contains(string(out), "needs a NATS server") {
		t.Fatalf("--create-streams without a server: %v\n%s", err, out)
	}
}

// TestNonRootWorker: a worker run by an ordinary user (nobody) keeps its
// credential in that user's state directory, mode 0600; subbus run by the
// same user finds it without flags, and another user (daemon) is refused.
func TestNonRootWorker(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run the worker as nobody")
	}
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		t.Skip("setpriv (util-linux) not installed")
	}
	nobody, err1 := user.Lookup("nobody")
	_, err2 := user.Lookup("daemon")
	if err1 != nil || err2 != nil {
		t.Skip("users nobody and daemon are needed")
	}
	uid, _ := strconv.Atoi(nobody.Uid)
	home, err := os.MkdirTemp("", "security-nobody-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(home) })
	if err := os.Chmod(home, 0o755); err != nil {
		t.Fatal(err)
	}
	workerBin, subbusBin := buildWorker(t), buildBin(t, "../subbus")
	port := freePort(t)
	cfg := filepath.Join(home, "config.yaml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf("nats:\n  listen: 127.0.0.1:%d\nprocess:\n  cgroups: \"off\"\n", port)), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := filepath.Walk(home, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Chown(p, uid, -1)
	}); err != nil {
		t.Fatal(err)
	}
	as := func(who string, args ...string) *exec.Cmd {
		cmd := exec.Command(setpriv, append([]string{"--reuid", who, "--regid", "nogroup", "--clear-groups", "--"}, args...)...)
		cmd.Env = []string{"PATH=/usr/bin:/bin", "HOME=" + home, "XDG_CONFIG_HOME=" + filepath.Join(home, "config")}
		return cmd
	}
	w := as("nobody", workerBin, "--config", cfg, "--host", "nobodyhost", "--drivers", "process", "--log-format", "json")
	logs := &lockedBuffer{}
	w.Stderr = logs
	if err := w.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = w.Process.Kill(); _ = w.Wait() })
	url := fmt.Sprintf("nats://127.0.0.1:%d", port)
	cred := filepath.Join(home, ".local", "state", "subbus", "client.nk")
	testenv.Eventually(t, 30*time.Second, func() error {
		out, err := as("nobody", subbusBin, "--server", url, "process", "list").CombinedOutput()
		if err != nil {
			return fmt.Errorf("subbus as nobody: %v: %s\n%s", err, out, logs.String())
		}
		return nil
	})
	st, err := os.Stat(cred)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 || st.Sys().(*syscall.Stat_t).Uid != uint32(uid) {
		t.Fatalf("credential %s: mode %v, owner %d", cred, st.Mode().Perm(), st.Sys().(*syscall.Stat_t).Uid)
	}
	// Another user, with the same environment, cannot read it.
	out, err := as("daemon", subbusBin, "--server", url, "process", "list").CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 7 || !strings.Contains(string(out), "not authorized - ask an administrator for access to "+cred) {
		t.Fatalf("subbus as daemon: %v\n%s", err, out)
	}
}

// lockedBuffer is a bytes.Buffer safe to read while a process writes it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
