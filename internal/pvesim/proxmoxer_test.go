package pvesim

import (
	"bufio"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/subbus/subbus/internal/testenv"
)

// TestProxmoxerClient runs bin/pvesim (built here) and drives it with
// Debian's python3-proxmoxer, an independent client, with ticket and
// with token auth.
func TestProxmoxerClient(t *testing.T) {
	py := "/usr/bin/python3" // Debian's, which sees python3-proxmoxer
	err := exec.Command(py, "-c", "import proxmoxer").Run()
	testenv.Require(t, "python3-proxmoxer", err, "bash scripts/setup/pvesim.sh (apt-get install python3-proxmoxer)")

	root := repoRoot(t)
	bin := filepath.Join(t.TempDir(), "pvesim")
	build := exec.Command("go", "build", "-o", bin, "./cmd/pvesim")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/pvesim: %v\n%s", err, out)
	}
	args := []string{"--listen", "127.0.0.1:0", "--password", "secret", "--token", "root@pam!ci=tok",
		"--nodes", "pve1,pve2", "--auth-failure-delay", "0", "--delay-factor", "0.2"}
	if s := filepath.Join(root, "..", "shared", "reference", "pve", "apischema-pve9.json.gz"); fileExists(s) {
		args = append(args, "--schema", s)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	sim := exec.CommandContext(ctx, bin, args...)
	stderr, err := sim.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := sim.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sim.Process.Kill(); _ = sim.Wait() }()
	host, fingerprint, err := readListening(stderr)
	if err != nil {
		t.Fatal(err)
	}
	if len(fingerprint) != 95 {
		t.Errorf("logged fingerprint %q", fingerprint)
	}
	for _, mode := range []string{"password", "token"} {
		t.Run(mode, func(t *testing.T) {
			out, err := exec.CommandContext(ctx, py, filepath.Join("testdata", "proxmoxer_client.py"), host, mode).CombinedOutput()
			if err != nil || !strings.Contains(string(out), "PASS") {
				t.Fatalf("proxmoxer client: %v\n%s", err, out)
			}
		})
	}
}

// readListening reads pvesim's log until the address and fingerprint lines.
func readListening(r interface{ Read([]byte) (int, error) }) (host, fingerprint string, err error) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := sc.Text()
		if i := strings.Index(line, "listening on https://"); i >= 0 {
			host = strings.Fields(line[i+len("listening on https://"):])[0]
		}
		if i := strings.Index(line, "fingerprint "); i >= 0 {
			fingerprint = strings.TrimSpace(line[i+len("fingerprint "):])
		}
		if host != "" && fingerprint != "" {
			go func() {
				for sc.Scan() {
				}
			}()
			return host, fingerprint, nil
		}
	}
	return "", "", errors.New("pvesim exited before listening")
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }
