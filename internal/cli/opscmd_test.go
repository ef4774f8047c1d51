package cli

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/subbus/subbus/internal/testenv"
	"github.com/subbus/subbus/internal/worker/workertest"
	"github.com/subbus/subbus/messages"
)

// stubbornCmd ignores SIGTERM (its children too) and says "ready" once it does.
var stubbornCmd = []string{"--", "/bin/sh", "-c", "trap '' TERM; echo ready; while :; do sleep 0.1; done"}

// createStubborn creates and starts a process instance that ignores
// SIGTERM and waits until it does.
func createStubborn(t *testing.T, url, name string) {
	t.Helper()
	subbus(t, url, append([]string{"process", "create", name}, stubbornCmd...)...).want(t, 0, "create "+name)
	t.Cleanup(func() { subbus(t, url, "process", "delete", name, "--force") })
	subbus(t, url, "process", "start", name).want(t, 0, "start "+name)
	testenv.Eventually(t, 20*time.Second, func() error {
		if r := subbus(t, url, "process", "logs", name); !strings.Contains(r.stdout, "ready") {
			return fmt.Errorf("%s not ready: %q %q", name, r.stdout, r.stderr)
		}
		return nil
	})
}

// TestLongOperationsCLI: --no-wait on the long commands, subbus ops
// list/get/wait/cancel, the progress lines of the synchronous path and
// what Ctrl-C says, through a real worker serving the process driver.
func TestLongOperationsCLI(t *testing.T) {
	workertest.Isolate(t)
	url := workertest.StartNATS(t)
	startWorkerCgroups(t, url, "h1", "off")
	name := unique("lo-cli")
	createStubborn(t, url, name)

	// --no-wait prints the id and how to follow it, and exits at once.
	r := subbus(t, url, "process", "stop", name, "--timeout", "10m", "--no-wait").want(t, 0, "stop --no-wait")
	if !strings.HasPrefix(r.stdout, "operation ") || !strings.Contains(r.stdout, "stopping "+name+" (grace 10m0s)") ||
		!strings.Contains(r.stdout, "subbus ops wait ") || !strings.Contains(r.stdout, "subbus ops cancel ") {
		t.Fatalf("stop --no-wait said:\n%s", r.stdout)
	}
	id := strings.Fields(strings.TrimSuffix(strings.Fields(r.stdout)[1], ":"))[0]
	r = subbus(t, url, "ops", "get", id).want(t, 0, "ops get")
	if !strings.Contains(r.stdout, "State:") || !strings.Contains(r.stdout, "running") || !strings.Contains(r.stdout, name) {
		t.Fatalf("ops get:\n%s", r.stdout)
	}
	r = subbus(t, url, "ops", "list", "--state", "running", "--driver", "process").want(t, 0, "ops list")
	if !strings.HasPrefix(r.stdout, "ID") || !strings.Contains(r.stdout, id) {
		t.Fatalf("ops list --state running:\n%s", r.stdout)
	}
	r = subbus(t, url, "ops", "list", "--state", "succeeded", "--json").want(t, 0, "ops list succeeded")
	for _, o := range decode[[]messages.Operation](t, r.stdout) {
		if o.ID == id {
			t.Fatalf("running op listed as succeeded: %+v", o)
		}
	}
	r = subbus(t, url, "ops", "cancel", id).want(t, 0, "ops cancel")
	if !strings.Contains(r.stdout, "cancel requested") {
		t.Fatalf("ops cancel said %q", r.stdout)
	}
	r = subbus(t, url, "ops", "wait", id).want(t, ExitTimeout, "ops wait (cancelled)")
	if !strings.Contains(r.stdout, "cancelled after ") {
		t.Fatalf("ops wait printed:\n%s", r.stdout)
	}
	r = subbus(t, url, "ops", "cancel", id).want(t, 0, "ops cancel again")
	if !strings.Contains(r.stdout, "already ended: cancelled") {
		t.Fatalf("second cancel said %q", r.stdout)
	}
	if r = subbus(t, url, "process", "get", name).want(t, 0, "get"); !strings.Contains(r.stdout, "running") {
		t.Fatalf("after the cancelled stop:\n%s", r.stdout)
	}

	// ops wait prints the progress as it happens and exits 0.
	r = subbus(t, url, "process", "stop", name, "--timeout", "2s", "--no-wait", "--json").want(t, 0, "stop --no-wait --json")
	o := decode[messages.Operation](t, r.stdout)
	if o.State != messages.OpRunning || o.Op != messages.OpStop || o.Instance != name {
		t.Fatalf("--json: %+v", o)
	}
	r = subbus(t, url, "ops", "wait", o.ID).want(t, 0, "ops wait")
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if len(lines) != 2 || !strings.HasSuffix(lines[0], "stopping "+name+" (grace 2s)") || !strings.Contains(lines[1], "killed after 2") {
		t.Fatalf("ops wait printed:\n%s", r.stdout)
	}
	subbus(t, url, "process", "start", name).want(t, 0, "start again")
	testenv.Eventually(t, 20*time.Second, func() error {
		if r := subbus(t, url, "process", "logs", name); strings.Count(r.stdout, "ready") < 2 {
			return fmt.Errorf("not ready again: %q", r.stdout)
		}
		return nil
	})

	// The synchronous path prints the same progress, without a terminal.
	r = subbus(t, url, "process", "stop", name, "--timeout", "1s").want(t, 0, "stop")
	if r.stdout != name+": stopped\n" || !strings.Contains(r.stderr, "stopping "+name+" (grace 1s)…\n") ||
		!strings.Contains(r.stderr, "killed after 1") {
		t.Fatalf("stop: stdout %q stderr %q", r.stdout, r.stderr)
	}
	// not with --json
	if r = subbus(t, url, "process", "start", name, "--json").want(t, 0, "start --json"); r.stderr != "" {
		t.Fatalf("start --json stderr %q", r.stderr)
	}

	// create --no-wait, then wait for it; its result is the instance.
	other := unique("lo-cli2")
	t.Cleanup(func() { subbus(t, url, "process", "delete", other, "--force") })
	r = subbus(t, url, "process", "create", other, "--no-wait", "--json", "--", "/bin/sleep", "60").want(t, 0, "create --no-wait")
	o = decode[messages.Operation](t, r.stdout)
	r = subbus(t, url, "ops", "wait", o.ID, "--json").want(t, 0, "ops wait --json")
	f := decode[messages.Operation](t, r.stdout)
	if inst := decode[messages.Instance](t, string(f.Result)); f.State != messages.OpSucceeded || inst.Name != other {
		t.Fatalf("create op: %+v (%s)", f, f.Result)
	}
	subbus(t, url, "process", "get", other).want(t, 0, "get the created instance")

	// Errors.
	subbus(t, url, "ops", "get", "lo0000").want(t, ExitNotFound, "ops get unknown")
	subbus(t, url, "ops", "wait").want(t, ExitUsage, "ops wait without id")
	subbus(t, url, "ops", "frob", "x").want(t, ExitUsage, "ops frob")
	subbus(t, url, "process", "get", name, "--no-wait").want(t, ExitUsage, "get --no-wait")
	subbus(t, url, "ops", "list", "--state", "done").want(t, ExitUsage, "--state done")
	r = subbus(t, url, "process", "op", "cancel", "lo0000", "--host", "h1").want(t, ExitNotFound, "op cancel unknown")
	r = subbus(t, url, "process", "stop", "--help").want(t, 0, "stop --help")
	if !strings.Contains(r.stdout, "-no-wait") {
		t.Fatalf("stop --help:\n%s", r.stdout)
	}
}

// TestInterruptedLongCommand: Ctrl-C during a synchronous stop says the
// worker keeps going and how to follow it; the stop goes on.
func TestInterruptedLongCommand(t *testing.T) {
	workertest.Isolate(t)
	url := workertest.StartNATS(t)
	startWorkerCgroups(t, url, "h1", "off")
	name := unique("lo-int")
	// It says when SIGTERM arrives (and goes on).
	subbus(t, url, "process", "create", name, "--", "/bin/sh", "-c", "trap 'echo got-term' TERM; echo ready; while :; do sleep 0.1; done").
		want(t, 0, "create")
	t.Cleanup(func() { subbus(t, url, "process", "delete", name, "--force") })
	subbus(t, url, "process", "start", name).want(t, 0, "start")
	testenv.Eventually(t, 20*time.Second, func() error {
		if r := subbus(t, url, "process", "logs", name); !strings.Contains(r.stdout, "ready") {
			return fmt.Errorf("not ready: %q", r.stdout)
		}
		return nil
	})

	var out, errOut syncBuffer
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan int, 1)
	go func() {
		done <- Run(ctx, []string{"--server", url, "process", "stop", name, "--timeout", "3s"}, &out, &errOut)
	}()
	testenv.Eventually(t, 10*time.Second, func() error {
		if !strings.Contains(errOut.String(), "stopping "+name) {
			return fmt.Errorf("no start line yet: %q", errOut.String())
		}
		// the stop reached the instance
		if r := subbus(t, url, "process", "logs", name); !strings.Contains(r.stdout, "got-term") {
			return fmt.Errorf("no SIGTERM yet: %q", r.stdout)
		}
		return nil
	})
	cancel()
	var code int
	select {
	case code = <-done:
	case <-time.After(15 * time.Second):
		t.Fatal("stop not interrupted")
	}
	if code != ExitInterrupted || !strings.Contains(errOut.String(), "the worker keeps going with stopping "+name) ||
		!strings.Contains(errOut.String(), "subbus events --follow --instance "+name) {
		t.Fatalf("exit %d, stderr %q", code, errOut.String())
	}
	// The worker went on: after the grace the instance is killed.
	testenv.Eventually(t, 20*time.Second, func() error {
		if r := subbus(t, url, "process", "get", name); !strings.Contains(r.stdout, "stopped") {
			return fmt.Errorf("not stopped yet:\n%s", r.stdout)
		}
		return nil
	})
}
