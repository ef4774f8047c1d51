package docker

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moby/moby/client"

	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/internal/testenv"
)

// TestImage is the offline image scripts/setup/docker.sh builds.
const TestImage = "subbus-test/busybox:latest"

const howToStart = "bash scripts/setup/docker.sh (starts dockerd and builds " + TestImage + ")"

// testPrefix starts the name of everything these tests create.
const testPrefix = "sbdk"

// daemonErr says why the Docker tests cannot run (nil when they can).
var daemonErr = sync.OnceValue(func() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := newClient(Options{}.withDefaults())
	if err != nil {
		return err
	}
	defer c.Close()
	if _, err := c.Ping(ctx, client.PingOptions{NegotiateAPIVersion: true}); err != nil {
		return err
	}
	if _, err := c.ImageInspect(ctx, TestImage); err != nil {
		return fmt.Errorf("test image %s: %w", TestImage, err)
	}
	return nil
})

// requireDocker skips (or fails in CI) without a daemon and test image.
func requireDocker(t testing.TB) {
	t.Helper()
	testenv.Require(t, "dockerd", daemonErr(), howToStart)
}

// connected returns a connected driver, closed at the end of the test.
func connected(t testing.TB) *Driver {
	t.Helper()
	requireDocker(t)
	d := New(Options{HostID: "test-host"})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := d.Connect(ctx); err != nil {
		t.Fatalf("Connect: %v", err)
	}
	t.Cleanup(func() { _ = d.Close() })
	return d
}

// uniqueName returns prefix-tag-<random>.
func uniqueName(tag string) string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return testPrefix + "-" + tag + "-" + hex.EncodeToString(b)
}

// testCtx is bounded and ends with the test.
func testCtx(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// busybox returns a template running script under sh, on the package's
// internal home network (never Docker's NAT'd default bridge).
func busybox(t testing.TB, name, script string) drivers.InstanceTemplate {
	t.Helper()
	return drivers.InstanceTemplate{
		Name:        name,
		BaseImage:   TestImage,
		Command:     []string{"sh", "-c", script},
		Environment: map[string]string{"SUBBUS_CONFORMANCE": "1"},
		Networks:    []drivers.NetworkConfig{{NetworkName: homeNetwork(t)}},
	}
}

// createT creates t's container and force-deletes it (and its snapshot
// images) at the end of the test.
func createT(t testing.TB, d *Driver, tmpl drivers.InstanceTemplate) drivers.Instance {
	t.Helper()
	t.Cleanup(func() { forceRemove(tmpl.Name) })
	inst, err := d.Create(testCtx(t, 30*time.Second), tmpl)
	if err != nil {
		t.Fatalf("Create %s: %v", tmpl.Name, err)
	}
	requireInternal(t, tmpl.Name)
	return inst
}

// requireInternal fails t unless every network container name is on is
// internal (or none): nothing a test creates may reach out through NAT.
func requireInternal(t testing.TB, name string) {
	t.Helper()
	nets := strings.Fields(dockerCLI(t, "inspect", "-f", "{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}", name))
	if len(nets) == 0 {
		t.Fatalf("container %s is on no network, want an internal one", name)
	}
	for _, n := range nets {
		if n == "none" {
			continue
		}
		if internal := dockerCLI(t, "network", "inspect", "-f", "{{.Internal}}", n); internal != "true" {
			t.Errorf("container %s is on network %s (internal=%s): tests may only use internal networks", name, n, internal)
		}
	}
}

// forceRemove removes a container and any images named for it, with the
// docker CLI (independent of the driver under test).
func forceRemove(name string) {
	_ = exec.Command("docker", "rm", "-f", "-v", name).Run()
	for _, repo := range []string{repoName(SnapshotRepo, name), repoName(CloneRepo, name), repoName(RestoreRepo, name)} {
		out, _ := exec.Command("docker", "images", "-q", repo).Output()
		for _, id := range strings.Fields(string(out)) {
			_ = exec.Command("docker", "rmi", "-f", id).Run()
		}
	}
}

// dockerCLI runs the docker CLI and returns its trimmed output.
func dockerCLI(t testing.TB, args ...string) string {
	t.Helper()
	out, err := exec.Command("docker", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("docker %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

// testNet is an internal (no NAT, no route out) network shared by the
// package's tests, created on first use and removed by TestMain.
type testNet struct {
	tag  string
	once sync.Once
	name string
	err  error
}

var (
	// home is the network every busybox template starts on.
	home = &testNet{tag: "home"}
	// attach is the network tests attach and detach.
	attach = &testNet{tag: "net"}
)

func (n *testNet) get(t testing.TB) string {
	t.Helper()
	n.once.Do(func() {
		name := uniqueName(n.tag)
		out, err := exec.Command("docker", "network", "create", "--internal", "--label", "io.subbus.test=true", name).CombinedOutput()
		if err != nil {
			n.err = fmt.Errorf("docker network create --internal %s: %v: %s", name, err, out)
			return
		}
		n.name = name
	})
	if n.err != nil {
		t.Fatal(n.err)
	}
	return n.name
}

// homeNetwork is the internal network test containers are created on.
func homeNetwork(t testing.TB) string { return home.get(t) }

// sharedNetwork is a second internal network, for attach/detach tests.
func sharedNetwork(t testing.TB) string { return attach.get(t) }

func TestMain(m *testing.M) {
	code := m.Run()
	for _, n := range []*testNet{home, attach} {
		if n.name != "" {
			_ = exec.Command("docker", "network", "rm", n.name).Run()
		}
	}
	os.Exit(code)
}

func randRead(b []byte) (int, error) { return rand.Read(b) }
