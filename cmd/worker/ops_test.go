package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/subbus/subbus/client"
	"github.com/subbus/subbus/internal/cli"
	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/internal/drivers/process"
	"github.com/subbus/subbus/internal/testenv"
	"github.com/subbus/subbus/messages"
)

// TestLongOperationLostWhenKilled kills (SIGKILL) a real worker process
// in the middle of a long operation begun with --no-wait: while the host's
// heartbeat is stale the operation reads as lost (`subbus ops get/list`,
// `ops wait` ends unavailable), and when the worker of that host starts
// again it marks the operation failed ("lost: …").
func TestLongOperationLostWhenKilled(t *testing.T) {
	bin := buildWorker(t)
	// An nkey user: a server without authentication would make the worker
	// try a root credential of this machine, if there is one.
	kp, _ := nkeys.CreateUser()
	seed, _ := kp.Seed()
	pub, _ := kp.PublicKey()
	seedFile := filepath.Join(t.TempDir(), "user.nk")
	if err := os.WriteFile(seedFile, seed, 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(), NoSigs: true, NoLog: true,
		Nkeys: []*server.NkeyUser{{Nkey: pub}}})
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server did not start")
	}
	t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	url := s.ClientURL()
	const host = "lo-kill"
	stateDir := t.TempDir()
	name := "lo-kill-web"
	// Runs last, after the workers are gone: the process driver over the
	// same state directory removes the instance whatever happened.
	t.Cleanup(func() {
		d := process.New(process.Options{StateDir: stateDir, Cgroups: "off"})
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := d.Connect(ctx); err == nil {
			_, _ = d.Delete(ctx, name, drivers.DeleteOptions{Force: true})
		}
		_ = d.Close()
	})
	cfg := writeConfig(t, fmt.Sprintf("nats:\n  url: %s\n  nkey: %s\nworker:\n  liveness_interval: 200ms\n  outbox_dir: none\nprocess:\n  state_dir: %s\n  cgroups: \"off\"\n",
		url, seedFile, stateDir))
	start := func() (*exec.Cmd, chan error, *lockedBuffer) {
		cmd := exec.Command(bin, "--config", cfg, "--host", host, "--drivers", "process", "--log-format", "json")
		cmd.Env = isolatedEnv(t)
		logs := &lockedBuffer{}
		cmd.Stderr = logs
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		t.Cleanup(func() {
			if cmd.ProcessState == nil {
				_ = cmd.Process.Kill()
				<-done
			}
		})
		return cmd, done, logs
	}
	run := func(args ...string) (string, string, int) {
		var out, errOut bytes.Buffer
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		code := cli.Run(ctx, append([]string{"--server", url, "--nkey", seedFile}, args...), &out, &errOut)
		return out.String(), errOut.String(), code
	}
	nc, err := nats.Connect(url, nats.Nkey(pub, kp.Sign))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	cl := client.New(nc, 20*time.Second)
	ready := func() {
		testenv.Eventually(t, 30*time.Second, func() error {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			return cl.Do(ctx, "process", host, messages.OpList, nil, nil)
		})
	}

	cmd, done, logs := start()
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("first worker's log:\n%s", logs.String())
		}
	})
	ready()
	if o, e, c := run("process", "create", name, "--host", host, "--", "/bin/sh", "-c", "trap '' TERM; echo ready; while :; do sleep 0.1; done"); c != 0 {
		t.Fatalf("create: %d %s %s", c, o, e)
	}
	if o, e, c := run("process", "start", name); c != 0 {
		t.Fatalf("start: %d %s %s", c, o, e)
	}
	testenv.Eventually(t, 20*time.Second, func() error {
		if o, _, _ := run("process", "logs", name); !strings.Contains(o, "ready") {
			return fmt.Errorf("not ready: %q", o)
		}
		return nil
	})
	out, errOut, code := run("process", "stop", name, "--timeout", "10m", "--no-wait", "--json")
	if code != 0 {
		t.Fatalf("stop --no-wait: %d %s %s", code, out, errOut)
	}
	var o messages.Operation
	if err := json.Unmarshal([]byte(out), &o); err != nil || o.ID == "" {
		t.Fatalf("stop --no-wait --json: %v %s", err, out)
	}

	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-done

	// While the heartbeat is stale, the operation reads as lost.
	testenv.Eventually(t, 15*time.Second, func() error {
		got, err := cl.Op(context.Background(), o.ID)
		if err != nil {
			return err
		}
		if !got.Lost || got.State != messages.OpRunning {
			return fmt.Errorf("not lost yet: %+v", got)
		}
		return nil
	})
	if out, _, code := run("ops", "get", o.ID); code != 0 || !strings.Contains(out, "lost") {
		t.Fatalf("ops get of a lost operation: %d\n%s", code, out)
	}
	if out, _, code := run("ops", "list", "--state", "lost"); code != 0 || !strings.Contains(out, o.ID) {
		t.Fatalf("ops list --state lost: %d\n%s", code, out)
	}
	if out, _, code := run("ops", "wait", o.ID); code != cli.ExitUnavailable || !strings.Contains(out, "lost") {
		t.Fatalf("ops wait of a lost operation: %d\n%s", code, out)
	}

	// The worker of that host starts again: the operation is marked failed.
	_, _, logs2 := start()
	ready()
	testenv.Eventually(t, 20*time.Second, func() error {
		got, err := cl.Op(context.Background(), o.ID)
		if err != nil {
			return err
		}
		if got.State != messages.OpFailed || got.Error == nil || got.Error.Code != drivers.Unavailable || !strings.HasPrefix(got.Error.Message, "lost:") {
			return fmt.Errorf("not marked failed yet: %+v", got)
		}
		return nil
	})
	out, _, code = run("ops", "wait", o.ID)
	if code != cli.ExitUnavailable || !strings.Contains(out, "lost") {
		t.Fatalf("ops wait after the restart: %d\n%s", code, out)
	}
	if _, e, c := run("process", "delete", name, "--force"); c != 0 {
		t.Errorf("delete: %d %s", c, e)
	}
	if !strings.Contains(logs2.String(), "operation lost by an earlier run of this worker marked failed") {
		t.Errorf("the restarted worker did not log the lost operation:\n%s\n(first run:\n%s)", logs2.String(), logs.String())
	}
}
