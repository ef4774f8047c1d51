package cli_test

// Units and limit removal against the real docker and LXD daemons, through
// a worker and the CLI as a user types them. Each daemon's subtest skips
// (fails in CI) without it.

import (
	"bufio"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/subbus/subbus/internal/cli"
	"github.com/subbus/subbus/internal/cli/clitest"
	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/internal/drivers/docker"
	"github.com/subbus/subbus/internal/drivers/lxc"
	"github.com/subbus/subbus/internal/manager"
	"github.com/subbus/subbus/internal/testenv"
	"github.com/subbus/subbus/messages"
)

// hostMemMiB is this machine's memory in MiB (/proc/meminfo).
func hostMemMiB(t *testing.T) int64 {
	t.Helper()
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "MemTotal:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb >> 10
		}
	}
	t.Fatal("no MemTotal in /proc/meminfo")
	return 0
}

// checkHealthUnits: the host's size under the same keys, in MiB, on every driver.
func checkHealthUnits(t *testing.T, f *clitest.Fleet, driver string) {
	t.Helper()
	var h messages.Health
	if err := json.Unmarshal([]byte(f.OK(driver, "health", "--json")), &h); err != nil {
		t.Fatal(err)
	}
	for _, old := range []string{"mem_total", "memory_total_mb", "memory_used_mb", "ncpu", "cpu_threads"} {
		if _, ok := h.Details[old]; ok {
			t.Errorf("%s health still reports %s: %v", driver, old, h.Details)
		}
	}
	mib, err := strconv.ParseInt(h.Details[drivers.DetailHostMemoryMiB], 10, 64)
	if want := hostMemMiB(t); err != nil || mib < want*9/10 || mib > want*11/10 {
		t.Errorf("%s health %s = %q, want about %d MiB (this host)", driver, drivers.DetailHostMemoryMiB, h.Details[drivers.DetailHostMemoryMiB], want)
	}
	if cpus, err := strconv.Atoi(h.Details[drivers.DetailHostCPUs]); err != nil || cpus < 1 || cpus > 4*runtime.NumCPU() {
		t.Errorf("%s health %s = %q", driver, drivers.DetailHostCPUs, h.Details[drivers.DetailHostCPUs])
	}
}

func limitsOf(t *testing.T, out string) messages.ResourceLimits {
	t.Helper()
	var l messages.ResourceLimits
	if err := json.Unmarshal([]byte(out), &l); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	return l
}

func TestUnitsAndLimitRemovalDocker(t *testing.T) {
	const image = "subbus-test/busybox:latest"
	d := docker.New(docker.Options{})
	probe, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	err := d.Connect(probe)
	cancel()
	if err == nil {
		err = exec.Command("docker", "image", "inspect", image).Run()
	}
	_ = d.Close()
	testenv.Require(t, "dockerd with "+image, err, "bash scripts/setup/docker.sh")

	host := clitest.Unique("cl-h")
	f := clitest.StartFleet(t, host, 120*time.Second, manager.New(docker.New(docker.Options{HostID: host}), manager.Options{Host: host, CacheTTL: -1}))
	name := clitest.Unique("cl-units")
	t.Cleanup(func() { _ = exec.Command("docker", "rm", "-f", name).Run() })

	checkHealthUnits(t, f, "docker")
	f.OK("docker", "create", name, "--image", image, "--memory", "64M", "--pids", "50", "--env", "DB_PASSWORD=hunter2", "--", "sleep", "300")
	out := f.OK("docker", "limits", "get", name, "--json")
	if l := limitsOf(t, out); l.MemoryMB != 64 || l.PIDs != 50 {
		t.Fatalf("limits after --memory 64M --pids 50: %+v", l)
	}
	if got, _ := exec.Command("docker", "inspect", "-f", "{{.HostConfig.Memory}}", name).Output(); strings.TrimSpace(string(got)) != strconv.Itoa(64<<20) {
		t.Fatalf("docker has memory %q, want %d bytes", got, 64<<20)
	}
	f.OK("docker", "start", name)
	// Remove the pids limit; memory stays.
	if l := limitsOf(t, f.OK("docker", "limits", "set", name, "--pids", "none", "--json")); l.MemoryMB != 64 || l.PIDs != 0 {
		t.Fatalf("after --pids none: %+v", l)
	}
	if got, _ := exec.Command("docker", "inspect", "-f", "{{.HostConfig.PidsLimit}}", name).Output(); strings.TrimSpace(string(got)) != "0" && strings.TrimSpace(string(got)) != "<nil>" {
		t.Fatalf("docker still has a pids limit: %q", got)
	}
	// Docker cannot remove a memory limit: unsupported, nothing changed.
	r := f.Expect(cli.ExitUnsupported, "docker", "limits", "set", name, "--memory", "none", "--pids", "70")
	if !strings.Contains(r.Stderr, "memory_mb") {
		t.Errorf("unsupported memory removal: %q", r.Stderr)
	}
	if l := limitsOf(t, f.OK("docker", "limits", "get", name, "--json")); l.MemoryMB != 64 || l.PIDs != 0 {
		t.Fatalf("a refused removal changed the limits: %+v", l)
	}
	// Human sizes on a running container.
	if l := limitsOf(t, f.OK("docker", "limits", "set", name, "--memory", "0.125G", "--json")); l.MemoryMB != 128 {
		t.Fatalf("after --memory 0.125G: %+v", l)
	}
	// get shows what docker knows, the secret masked.
	out = f.OK("docker", "get", name, "--json")
	var i messages.Instance
	if err := json.Unmarshal([]byte(out), &i); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(out, "hunter2") || i.Environment["DB_PASSWORD"] != messages.MaskedValue || i.PID <= 0 ||
		len(i.Command) != 2 || i.Command[0] != "sleep" || i.StartedAt.IsZero() {
		t.Fatalf("docker get --json: %+v", i)
	}
	f.OK("docker", "stop", name, "--grace", "1")
	out = f.OK("docker", "get", name, "--json")
	i = messages.Instance{}
	if err := json.Unmarshal([]byte(out), &i); err != nil || i.ExitCode == nil || i.PID != 0 {
		t.Fatalf("docker get after stop: %v %+v", err, i)
	}
}

func TestUnitsAndLimitRemovalLXC(t *testing.T) {
	const image = "subbus-busybox"
	probe, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	d := lxc.New(lxc.DefaultOptions())
	err := d.Connect(probe)
	cancel()
	if err == nil {
		err = exec.Command("lxc", "image", "info", image).Run()
	}
	_ = d.Close()
	testenv.Require(t, "LXD with the "+image+" image", err, "bash scripts/setup/lxd.sh")

	host := clitest.Unique("cl-h")
	f := clitest.StartFleet(t, host, 180*time.Second, manager.New(lxc.New(lxc.DefaultOptions()), manager.Options{Host: host, CacheTTL: -1}))
	name := clitest.Unique("cl-units")
	t.Cleanup(func() { _ = exec.Command("lxc", "delete", "--force", name).Run() })

	checkHealthUnits(t, f, "lxc")
	f.OK("lxc", "create", name, "--image", image, "--memory", "0.25Gi", "--cpu", "1", "--pids", "100", "--env", "API_KEY=k1")
	if l := limitsOf(t, f.OK("lxc", "limits", "get", name, "--json")); l.MemoryMB != 256 || l.CPUCores != 1 || l.PIDs != 100 {
		t.Fatalf("limits after create: %+v", l)
	}
	if got, _ := exec.Command("lxc", "config", "get", name, "limits.memory").Output(); strings.TrimSpace(string(got)) != "256MiB" {
		t.Fatalf("lxc limits.memory = %q, want 256MiB", got)
	}
	if l := limitsOf(t, f.OK("lxc", "limits", "set", name, "--memory", "none", "--cpu", "none", "--json")); l.MemoryMB != 0 || l.CPUCores != 0 || l.PIDs != 100 {
		t.Fatalf("after --memory none --cpu none: %+v", l)
	}
	for _, key := range []string{"limits.memory", "limits.cpu"} {
		if got, _ := exec.Command("lxc", "config", "get", name, key).Output(); strings.TrimSpace(string(got)) != "" {
			t.Fatalf("lxc %s still %q", key, got)
		}
	}
	f.Expect(cli.ExitUnsupported, "lxc", "limits", "set", name, "--disk", "none")
	out := f.OK("lxc", "get", name, "--json")
	var i messages.Instance
	if err := json.Unmarshal([]byte(out), &i); err != nil || i.Environment["API_KEY"] != messages.MaskedValue || strings.Contains(out, "k1\"") {
		t.Fatalf("lxc get --json: %v %s", err, out)
	}
	if i.PID != 0 || !i.StartedAt.IsZero() {
		t.Fatalf("lxc get --json of a stopped container: pid %d, started_at %v", i.PID, i.StartedAt)
	}
	// Running: the init's PID and the start time reach the wire.
	f.OK("lxc", "start", name)
	out = f.OK("lxc", "get", name, "--json")
	i = messages.Instance{}
	if err := json.Unmarshal([]byte(out), &i); err != nil || i.PID <= 0 || i.StartedAt.IsZero() {
		t.Fatalf("lxc get --json of a running container: %v %s", err, out)
	}
}
