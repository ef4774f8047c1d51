package supervisor

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/subbus/subbus/internal/config"
	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/internal/manager/driverstest"
	"github.com/subbus/subbus/internal/testenv"
)

// The test supervisord is started by scripts/setup/supervisor.sh with its
// own configuration under $SUBBUS_SETUP_DIR/supervisor.
const (
	howToStart = "bash scripts/setup/supervisor.sh"
	// httpPort, httpUser and httpPassword are the script's inet_http_server.
	httpUser     = "subbus"
	httpPassword = "subbus-test"
	// nativeProgram is defined in the script's main configuration, not by the driver.
	nativeProgram = "subbus-native"
)

// setupDir is the test supervisord's directory.
func setupDir() string {
	base := os.Getenv("SUBBUS_SETUP_DIR")
	if base == "" {
		base = "/var/lib/subbus-test"
	}
	return filepath.Join(base, "supervisor")
}

func httpURL() string {
	if u := os.Getenv("SUBBUS_SUPERVISOR_HTTP_URL"); u != "" {
		return u
	}
	port := os.Getenv("SUBBUS_SUPERVISOR_HTTP_PORT")
	if port == "" {
		port = "29001"
	}
	return "http://127.0.0.1:" + port + "/RPC2"
}

// testOptions returns options for the test supervisord, skipping (failing
// in CI) when it does not answer.
func testOptions(t testing.TB) Options {
	t.Helper()
	dir := setupDir()
	o := DefaultOptions()
	o.URL = os.Getenv("SUBBUS_SUPERVISOR_URL")
	if o.URL == "" {
		o.URL = "unix://" + filepath.Join(dir, "supervisor.sock")
	}
	o.ProgramsDir = filepath.Join(dir, "programs")
	o.LogDir = filepath.Join(dir, "log")
	o.StopWaitSecs = 5
	o.PollInterval = config.Duration(200 * time.Millisecond)
	d, err := New(o)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	testenv.Require(t, "supervisord ("+o.URL+")", d.Connect(ctx), howToStart)
	return o
}

type harness struct{ opts Options }

func (h harness) MakeDriver(context.Context) (drivers.Driver, error) { return New(h.opts) }

func (h harness) Template(name string) drivers.InstanceTemplate {
	return drivers.InstanceTemplate{
		Name:        name,
		BaseImage:   "/bin/sh",
		Command:     []string{"/bin/sh", "-c", driverstest.ConformanceScript(name)},
		Environment: map[string]string{"SUBBUS_CONFORMANCE": "1"},
		Metadata:    map[string]string{"suite": "conformance"},
	}
}

func (h harness) Close() {}

// ScriptTemplate is Template running script.
func (h harness) ScriptTemplate(name, script string) drivers.InstanceTemplate {
	t := h.Template(name)
	t.Command = []string{"/bin/sh", "-c", script}
	return t
}

// StubbornTemplate: the program's shell ignores SIGTERM, so only a kill ends it.
func (h harness) StubbornTemplate(name string) drivers.InstanceTemplate {
	t := h.Template(name)
	t.Command = []string{"/bin/sh", "-c", driverstest.StubbornScript(name)}
	return t
}

// Unreachable points the driver at a socket where no supervisord listens.
func (h harness) Unreachable(context.Context) (drivers.Driver, error) {
	o := h.opts
	o.URL = "unix:///nonexistent/subbus-test/supervisor.sock"
	return New(o)
}

func TestConformance(t *testing.T) {
	o := testOptions(t)
	driverstest.RunConformanceTests(t,
		func(ctx context.Context, t *testing.T) (driverstest.Harness, error) { return harness{opts: o}, nil },
		driverstest.WithCapabilities(drivers.Capabilities{Logs: true, Clone: true, Events: true}),
		driverstest.WithNamePrefix("sbsv"),
	)
}

// uniqueName returns prefix-<random>.
func uniqueName(prefix string) string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return prefix + "-" + hex.EncodeToString(b)
}

// newDriver returns a connected driver and a ctx bounded by the test.
func newDriver(t *testing.T, o Options) (*Driver, context.Context) {
	t.Helper()
	d, err := New(o)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	if err := d.Connect(ctx); err != nil {
		t.Fatalf("Connect: %v", err)
	}
	t.Cleanup(func() { _ = d.Close() })
	return d, ctx
}

// cleanupDelete force-deletes name at the end of the test.
func cleanupDelete(t *testing.T, d *Driver, name string) {
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := d.Delete(ctx, name, drivers.DeleteOptions{Force: true}); err != nil {
			t.Errorf("cleanup: delete %s: %v", name, err)
		}
	})
}

func wantCode(t *testing.T, what string, err error, code drivers.Code) {
	t.Helper()
	if got := classify(err); got != code {
		t.Fatalf("%s: %v (code %s), want %s", what, err, got, code)
	}
}
