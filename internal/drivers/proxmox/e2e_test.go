package proxmox_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/subbus/subbus/internal/cli"
	"github.com/subbus/subbus/internal/cli/clitest"
	"github.com/subbus/subbus/internal/testenv"
)

// Ports of this test (the proxmox driver's ranges on shared machines).
const (
	e2eSimAddr  = "127.0.0.1:18020"
	e2eNATSPort = 14201
)

// schemaFile is PVE 9's schema in the shared reference beside the repository.
func schemaFile(t *testing.T) string {
	_, file, _, _ := runtime.Caller(0)
	p := filepath.Join(filepath.Dir(file), "..", "..", "..", "..", "shared", "reference", "pve", "apischema-pve9.json.gz")
	if _, err := os.Stat(p); err != nil {
		if testenv.InCI() {
			t.Fatalf("PVE API schema: %v", err)
		}
		t.Skipf("PVE API schema not available (%v)", err)
	}
	return p
}

// start runs a binary until the end of the test, its stderr piped to a
// reader the caller may scan.
func start(t *testing.T, bin string, args ...string) io.Reader {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir(), "XDG_CONFIG_HOME=" + t.TempDir()}
	pr, pw := io.Pipe()
	cmd.Stderr = pw
	cmd.Stdout = io.Discard
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); _ = pw.Close(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})
	return pr
}

// instanceJSON is what the test reads of `get --json` (the wire format).
type instanceJSON struct {
	Metadata map[string]string `json:"metadata"`
	Managed  bool              `json:"managed"`
	Limits   struct {
		CPUCores float64 `json:"cpu_cores"`
		MemoryMB int64   `json:"memory_mb"`
	} `json:"limits"`
}

// TestEndToEnd runs bin/pvesim and bin/worker (with a proxmox: section)
// as a user would, and drives them with `subbus proxmox …`: the "try it
// without a cluster" walk-through of docs/proxmox.md, with what only PVE
// has (QEMU VMs and LXC containers side by side, guests addressed by
// VMID, no exec in containers). The commands themselves, the same on
// every driver, are the session of internal/e2etest.
func TestEndToEnd(t *testing.T) {
	schema := schemaFile(t)
	clitest.Isolate(t)
	dir := t.TempDir()
	pvesim := clitest.Build(t, "./cmd/pvesim")
	worker := clitest.Build(t, "./cmd/worker")

	const token, secret = "root@pam!subbus", "0d9a3c1e-5b7f-4e2a-9c8d-1f2e3d4c5b6a"
	logs := start(t, pvesim, "--listen", e2eSimAddr, "--token", token+"="+secret, "--schema", schema, "--delay-factor", "0.5")
	fp := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(logs)
		for sc.Scan() {
			if _, after, ok := strings.Cut(sc.Text(), "certificate SHA-256 fingerprint "); ok {
				fp <- strings.TrimSpace(after)
			}
		}
	}()
	var fingerprint string
	select {
	case fingerprint = <-fp:
	case <-time.After(30 * time.Second):
		t.Fatal("pvesim logged no certificate fingerprint within 30s")
	}

	secretFile := filepath.Join(dir, "token")
	if err := os.WriteFile(secretFile, []byte(secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "substrate_config.yaml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(`nats:
  listen: 127.0.0.1:%d
  data_dir: %s
worker:
  host: px-e2e
  drivers: [proxmox]
proxmox:
  url: https://%s
  token_id: %s
  token_secret_file: %s
  fingerprint: %s
  task_poll_interval: 100ms
  event_poll_interval: 500ms
  log_poll_interval: 500ms
`, e2eNATSPort, filepath.Join(dir, "nats"), e2eSimAddr, token, secretFile, fingerprint)), 0o600); err != nil {
		t.Fatal(err)
	}
	wlogs := start(t, worker, "--config", cfg, "--log-format", "json")
	go func() { _, _ = io.Copy(io.Discard, wlogs) }()
	url := fmt.Sprintf("nats://127.0.0.1:%d", e2eNATSPort)
	run := func(args ...string) clitest.Result { return clitest.SubbusWithin(t, time.Minute, url, args...) }
	ok := func(args ...string) string {
		t.Helper()
		return run(args...).Want(t, cli.ExitOK, strings.Join(args, " ")).Stdout
	}
	testenv.Eventually(t, 60*time.Second, func() error {
		if r := run("proxmox", "list"); r.Code != cli.ExitOK {
			return fmt.Errorf("proxmox list: exit %d: %s", r.Code, r.Stderr)
		}
		return nil
	})

	// A VM from the seeded ISO and a container from the seeded template.
	ok("proxmox", "create", "px-e2e-vm", "--image", "local:iso/debian-12.7.0-amd64-netinst.iso", "--cpu", "2", "--memory", "1024", "--label", "team=e2e")
	ok("proxmox", "create", "px-e2e-ct", "--image", "local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst", "--memory", "256")
	var vm, ct instanceJSON
	if err := json.Unmarshal([]byte(ok("proxmox", "get", "px-e2e-vm", "--json")), &vm); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(ok("proxmox", "get", "px-e2e-ct", "--json")), &ct); err != nil {
		t.Fatal(err)
	}
	if vm.Metadata["kind"] != "qemu" || vm.Metadata["team"] != "e2e" || !vm.Managed || vm.Limits.CPUCores != 2 || vm.Limits.MemoryMB != 1024 {
		t.Errorf("VM %+v", vm)
	}
	if ct.Metadata["kind"] != "lxc" || ct.Limits.MemoryMB != 256 {
		t.Errorf("container %+v", ct)
	}

	ok("proxmox", "start", "px-e2e-vm")
	ok("proxmox", "start", vm.Metadata["vmid"]) // by VMID: already running
	ok("proxmox", "start", "px-e2e-ct")
	if out := ok("proxmox", "list"); !strings.Contains(out, "px-e2e-vm") || !strings.Contains(out, "running") {
		t.Errorf("list: %q", out)
	}
	testenv.Eventually(t, 20*time.Second, func() error {
		r := run("proxmox", "exec", "px-e2e-vm", "--", "echo", "hello from the agent")
		if r.Code != 0 || r.Stdout != "hello from the agent\n" {
			return fmt.Errorf("exec: exit %d stdout %q stderr %q", r.Code, r.Stdout, r.Stderr)
		}
		return nil
	})
	if r := run("proxmox", "exec", "px-e2e-ct", "--", "true"); r.Code == 0 || !strings.Contains(r.Stderr, "unsupported") {
		t.Errorf("exec in a container: exit %d stderr %q, want unsupported", r.Code, r.Stderr)
	}
	if out := ok("events", "--driver", "proxmox", "--instance", "px-e2e-vm"); !strings.Contains(out, "started") {
		t.Errorf("events: %q", out)
	}
	run("proxmox", "delete", "px-e2e-ct").Expect(t, cli.ExitConflict, "delete of a running container")
	ok("proxmox", "delete", "px-e2e-ct", "--force")
	ok("proxmox", "delete", "px-e2e-vm", "--force")
	run("proxmox", "get", "px-e2e-vm").Expect(t, cli.ExitNotFound, "get after delete")
}
