package proxmox_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"github.com/subbus/subbus/client"
	"github.com/subbus/subbus/internal/cli/clitest"
	"github.com/subbus/subbus/internal/testenv"
	"github.com/subbus/subbus/messages"
)

// Ports of TestKilledWorker.
const (
	killSimAddr  = "127.0.0.1:14410"
	killNATSPort = 14411
)

// process is a binary started by startProcess.
type process struct {
	cmd  *exec.Cmd
	done chan struct{}
}

// startProcess runs bin until the end of the test (or until killed); its
// stderr is scanned line by line by onLine (when not nil).
func startProcess(t *testing.T, onLine func(string), bin string, args ...string) *process {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir(), "XDG_CONFIG_HOME=" + t.TempDir()}
	pr, pw := io.Pipe()
	cmd.Stderr, cmd.Stdout = pw, io.Discard
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			if onLine != nil {
				onLine(sc.Text())
			}
		}
		_, _ = io.Copy(io.Discard, pr)
	}()
	p := &process{cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); _ = pw.Close(); close(p.done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		select {
		case <-p.done:
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

// TestKilledWorker: two worker processes (px-w1, px-w2) serve one Proxmox
// cluster (pvesim, with slow tasks), a cluster-wide substrate, through one
// NATS server. px-w1 is killed with SIGKILL while it starts a VM, holding
// the VM's lease: pooled requests go on on px-w2, px-w1's lease expires
// after lease_ttl (a stop sent to px-w2 right after the kill waits for
// it), and the VM can then be operated again through px-w2.
func TestKilledWorker(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test in -short mode")
	}
	schema := schemaFile(t)
	clitest.Isolate(t)
	dir := t.TempDir()
	pvesim := clitest.Build(t, "./cmd/pvesim")
	workerBin := clitest.Build(t, "./cmd/worker")

	// An nkey user: as root, a worker given a loopback URL and no
	// credential would try the local one (natsconn).
	kp, _ := nkeys.CreateUser()
	seed, _ := kp.Seed()
	pub, _ := kp.PublicKey()
	seedFile := filepath.Join(dir, "fleet.nk")
	if err := os.WriteFile(seedFile, seed, 0o600); err != nil {
		t.Fatal(err)
	}
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: killNATSPort, JetStream: true,
		StoreDir: filepath.Join(dir, "nats"), NoSigs: true, NoLog: true, Nkeys: []*server.NkeyUser{{Nkey: pub}}})
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server did not start")
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })

	// Tasks 20 times slower than pvesim's defaults: a VM start takes 4 s.
	const token, secret = "root@pam!subbus", "5b1e0c7a-2f4d-4c8e-9a6b-3d2e1f0a9b8c"
	fp := make(chan string, 1)
	startProcess(t, func(line string) {
		if _, after, ok := strings.Cut(line, "certificate SHA-256 fingerprint "); ok {
			fp <- strings.TrimSpace(after)
		}
	}, pvesim, "--listen", killSimAddr, "--token", token+"="+secret, "--schema", schema, "--delay-factor", "20")
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
	const ttl = 3 * time.Second
	workers := map[string]*process{}
	nc, err := nats.Connect(ns.ClientURL(), nats.Nkey(pub, kp.Sign))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	cl := client.New(nc, 30*time.Second)
	ctx := func(d time.Duration) context.Context {
		c, cancel := context.WithTimeout(context.Background(), d)
		t.Cleanup(cancel)
		return c
	}
	for _, h := range []string{"px-w1", "px-w2"} {
		cfg := filepath.Join(dir, h+".yaml")
		if err := os.WriteFile(cfg, []byte(fmt.Sprintf(`nats:
  url: nats://127.0.0.1:%d
  nkey: %s
worker:
  host: %s
  drivers: [proxmox]
  lease_ttl: %s
  outbox_dir: none
proxmox:
  url: https://%s
  token_id: %s
  token_secret_file: %s
  fingerprint: %s
  task_poll_interval: 100ms
  event_poll_interval: 500ms
`, killNATSPort, seedFile, h, ttl, killSimAddr, token, secretFile, fingerprint)), 0o600); err != nil {
			t.Fatal(err)
		}
		var mu sync.Mutex
		var logs strings.Builder
		workers[h] = startProcess(t, func(line string) {
			mu.Lock()
			logs.WriteString(line + "\n")
			mu.Unlock()
		}, workerBin, "--config", cfg, "--log-format", "json")
		t.Cleanup(func() {
			if t.Failed() {
				mu.Lock()
				t.Logf("worker %s:\n%s", h, logs.String())
				mu.Unlock()
			}
		})
		// Serving, and (for the first) the lease bucket created.
		testenv.Eventually(t, 60*time.Second, func() error {
			return cl.Do(ctx(5*time.Second), "proxmox", h, messages.OpList, nil, nil)
		})
	}
	js, _ := jetstream.New(nc)
	var leases jetstream.KeyValue
	testenv.Eventually(t, 30*time.Second, func() (err error) {
		leases, err = js.KeyValue(ctx(5*time.Second), messages.LeasesBucket)
		return err
	})

	const vm = "px-kill-vm"
	tmpl := messages.Template{Name: vm, BaseImage: "local:iso/debian-12.7.0-amd64-netinst.iso"}
	if err := cl.Do(ctx(60*time.Second), "proxmox", "px-w2", messages.OpCreate, messages.CreateRequest{Template: tmpl}, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cl.Do(context.Background(), "proxmox", "px-w2", messages.OpDelete, messages.DeleteRequest{Name: vm, Force: true}, nil)
	})

	// px-w1 starts the VM (4 s) and holds its lease: kill -9 it then.
	go func() {
		_ = cl.Do(ctx(60*time.Second), "proxmox", "px-w1", messages.OpStart, messages.NameRequest{Name: vm}, nil)
	}()
	testenv.Eventually(t, 20*time.Second, func() error {
		e, err := leases.Get(ctx(5*time.Second), messages.LeaseKey("proxmox", vm))
		if err != nil {
			return err
		}
		var l messages.Lease
		if err := json.Unmarshal(e.Value(), &l); err != nil || l.Host != "px-w1" {
			return fmt.Errorf("lease %s (%v), want held by px-w1", e.Value(), err)
		}
		return nil
	})
	if err := workers["px-w1"].cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	<-workers["px-w1"].done

	// A change of the VM through px-w2 waits for the dead holder's lease
	// to expire, then runs.
	stopped := make(chan error, 1)
	go func() {
		stopped <- cl.Do(ctx(60*time.Second), "proxmox", "px-w2", messages.OpStop, messages.StopRequest{Name: vm, Force: true}, nil)
	}()

	// Pooled requests go on on px-w2: the first may still meet the dead
	// connection before the server has dropped it; then every one is
	// answered, by px-w2.
	testenv.Eventually(t, 10*time.Second, func() error {
		_, err := cl.DoReply(ctx(2*time.Second), "proxmox", "", messages.OpList, nil, nil)
		return err
	})
	for i := range 10 {
		r, err := cl.DoReply(ctx(10*time.Second), "proxmox", "", messages.OpList, nil, nil)
		if err != nil || r.Host != "px-w2" {
			t.Fatalf("pooled request %d after the kill: %v (answered by %q)", i, err, r.Host)
		}
	}

	if err := <-stopped; err != nil {
		t.Fatalf("stop through px-w2 after the kill: %v", err)
	}
	if waited := time.Since(killed); waited < ttl/2 {
		t.Fatalf("the stop did not wait for px-w1's lease to expire (%v after the kill, lease_ttl %v)", waited, ttl)
	}
	var inst messages.Instance
	if err := cl.Do(ctx(30*time.Second), "proxmox", "px-w2", messages.OpGet, messages.NameRequest{Name: vm}, &inst); err != nil {
		t.Fatal(err)
	}
	if inst.State != "stopped" {
		t.Fatalf("%s is %s after the stop", vm, inst.State)
	}
	if _, err := leases.Get(ctx(5*time.Second), messages.LeaseKey("proxmox", vm)); !errors.Is(err, jetstream.ErrKeyNotFound) && !errors.Is(err, jetstream.ErrKeyDeleted) {
		t.Fatalf("lease of %s after the stop: %v, want released", vm, err)
	}
}
