package cli

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/internal/drivers/process"
	"github.com/subbus/subbus/internal/manager"
	"github.com/subbus/subbus/internal/testenv"
	"github.com/subbus/subbus/internal/worker"
	"github.com/subbus/subbus/internal/worker/workertest"
	"github.com/subbus/subbus/messages"
)

// fleetHost is one worker of a two-host fleet test.
type fleetHost struct {
	m  *manager.Manager
	mu sync.Mutex
	nc *nats.Conn
}

// kill closes the worker's NATS connection: it stops answering and its
// heartbeats stop, as when its machine dies.
func (h *fleetHost) kill() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.nc.Close()
}

// startFleetHost runs a worker for host serving the process driver with
// fast heartbeats and resyncs; instances left at the end are deleted
// through its manager (the bus may be gone).
func startFleetHost(t *testing.T, url, host string) *fleetHost {
	t.Helper()
	h := &fleetHost{m: manager.New(process.New(process.Options{StateDir: t.TempDir(), Cgroups: "off"}), manager.Options{Host: host})}
	workertest.StartWorkerWith(t, url, host, func(o *worker.Options) {
		o.LivenessInterval = 200 * time.Millisecond
		o.InventoryResync = time.Second
		o.Connect = func(extra ...nats.Option) (*nats.Conn, error) {
			nc, err := nats.Connect(url, extra...)
			h.mu.Lock()
			h.nc = nc
			h.mu.Unlock()
			return nc, err
		}
	}, h.m)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		list, _ := h.m.List(ctx)
		for _, i := range list {
			_, _ = h.m.Delete(ctx, i.Name, drivers.DeleteOptions{Force: true})
		}
	})
	return h
}

// TestFleetWithoutHost is the two-worker scenario of docs/fleet.md: with
// hosta and hostb serving the process driver on one NATS, every command
// naming an instance without --host reaches its owner, 10 times out of 10;
// a name on both hosts and an owner that died are reported as documented.
func TestFleetWithoutHost(t *testing.T) {
	workertest.Isolate(t)
	url := workertest.StartNATS(t)
	startFleetHost(t, url, "hosta")
	hb := startFleetHost(t, url, "hostb")

	fw1, fw2 := unique("fw1"), unique("fw2")
	subbus(t, url, "process", "create", fw1, "--host", "hosta", "--", "/bin/sh", "-c", "echo hello-a; sleep 300").want(t, 0, "create on hosta")
	subbus(t, url, "process", "create", fw2, "--host", "hostb", "--", "/bin/sh", "-c", "echo hello-b; sleep 300").want(t, 0, "create on hostb")
	subbus(t, url, "process", "start", fw1).want(t, 0, "start "+fw1)
	subbus(t, url, "process", "start", fw2).want(t, 0, "start "+fw2)

	for i := range 10 {
		for name, host := range map[string]string{fw1: "hosta", fw2: "hostb"} {
			r := subbus(t, url, "process", "get", name, "--json").want(t, 0, "get "+name)
			if inst := decode[messages.Instance](t, r.stdout); inst.Host != host || inst.Name != name {
				t.Fatalf("run %d: get %s answered %+v, want host %s", i, name, inst, host)
			}
		}
		r := subbus(t, url, "process", "list", "--json").want(t, 0, "list")
		got := map[string]string{}
		for _, inst := range decode[[]messages.Instance](t, r.stdout) {
			got[inst.Name] = inst.Host
		}
		if got[fw1] != "hosta" || got[fw2] != "hostb" {
			t.Fatalf("run %d: list shows %v", i, got)
		}
		subbus(t, url, "process", "stop", fw1, "--timeout", "2s").want(t, 0, "stop")
		subbus(t, url, "process", "start", fw1).want(t, 0, "start")
		r = subbus(t, url, "process", "exec", fw2, "--", "/bin/sh", "-c", "echo on-$0", "x").want(t, 0, "exec")
		if !strings.Contains(r.stdout, "on-x") {
			t.Fatalf("run %d: exec printed %q", i, r.stdout)
		}
		testenv.Eventually(t, 10*time.Second, func() error {
			r = subbus(t, url, "process", "logs", fw2, "--lines", "5")
			if r.code != 0 || !strings.Contains(r.stdout, "hello-b") {
				return fmt.Errorf("logs: exit %d %q %q", r.code, r.stdout, r.stderr)
			}
			return nil
		})
		// delete: a fresh instance each run, alternating hosts.
		host := []string{"hosta", "hostb"}[i%2]
		victim := unique("del")
		subbus(t, url, "process", "create", victim, "--host", host, "--", "/bin/sleep", "300").want(t, 0, "create victim")
		subbus(t, url, "process", "delete", victim, "--force").want(t, 0, "delete "+victim+" on "+host)
		subbus(t, url, "process", "get", victim).want(t, ExitNotFound, "get after delete")
	}

	// Unknown name: not_found from the inventory.
	r := subbus(t, url, "process", "get", "nope").want(t, ExitNotFound, "unknown name")
	if !strings.Contains(r.stderr, "instance \"nope\" not found: process: on no host (fleet inventory)") {
		t.Fatalf("unknown name: %q", r.stderr)
	}
	// The same name on both hosts: invalid_argument listing the hosts,
	// nothing sent; --host still wins.
	dup := unique("dup")
	for _, h := range []string{"hosta", "hostb"} {
		subbus(t, url, "process", "create", dup, "--host", h, "--", "/bin/sleep", "300").want(t, 0, "create dup on "+h)
	}
	r = subbus(t, url, "process", "stop", dup).want(t, ExitInvalidArgument, "ambiguous name")
	if !strings.Contains(r.stderr, "several hosts (hosta, hostb)") {
		t.Fatalf("ambiguous: %q", r.stderr)
	}
	subbus(t, url, "process", "get", dup, "--host", "hostb").want(t, 0, "--host wins")

	// Create without --host: placed on a host serving the driver that is up.
	placed := unique("placed")
	subbus(t, url, "process", "create", placed, "--", "/bin/sleep", "300").want(t, 0, "create without --host")
	if inst := decode[messages.Instance](t, subbus(t, url, "process", "get", placed, "--json").want(t, 0, "get placed").stdout); inst.Host != "hosta" && inst.Host != "hostb" {
		t.Fatalf("placed on %q", inst.Host)
	}

	// hostb dies: its instance's owner is reported unreachable, by name;
	// `workers` and the inventory call it stale; its records stay.
	hb.kill()
	r = subbus(t, url, "process", "get", fw2).want(t, ExitUnavailable, "owner dead")
	if !strings.Contains(r.stderr, "owned by host hostb, which is unreachable") {
		t.Fatalf("owner dead: %q", r.stderr)
	}
	testenv.Eventually(t, 10*time.Second, func() error {
		r = subbus(t, url, "workers")
		if !strings.Contains(r.stdout, "hostb") || !strings.Contains(r.stdout, "stale") {
			return fmt.Errorf("workers: %s", r.stdout)
		}
		return nil
	})
	r = subbus(t, url, "process", "list", "--inventory", "--json").want(t, 0, "inventory view")
	if !strings.Contains(r.stderr, "host hostb: worker stale") {
		t.Fatalf("inventory view stderr: %q", r.stderr)
	}
	found := false
	for _, i := range decode[[]inventoryInstance](t, r.stdout) {
		if i.Name == fw2 {
			found = i.Stale && i.Host == "hostb"
		}
	}
	if !found {
		t.Fatalf("inventory view lacks stale %s: %s", fw2, r.stdout)
	}
	r = subbus(t, url, "process", "list").want(t, ExitUnavailable, "fleet list with hostb dead")
	if !strings.Contains(r.stdout, fw1) || !strings.Contains(r.stderr, "host hostb") {
		t.Fatalf("fleet list: %s / %s", r.stdout, r.stderr)
	}
}
