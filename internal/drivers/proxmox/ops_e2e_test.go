package proxmox_test

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/subbus/subbus/internal/cli"
	"github.com/subbus/subbus/internal/cli/clitest"
	"github.com/subbus/subbus/internal/config"
	"github.com/subbus/subbus/internal/drivers/proxmox"
	"github.com/subbus/subbus/internal/manager"
	"github.com/subbus/subbus/internal/pvesim"
	"github.com/subbus/subbus/internal/testenv"
	"github.com/subbus/subbus/messages"
)

// TestLongOperationCancel cancels long operations of the proxmox driver
// begun with --no-wait through a worker: the op's context ends the
// driver's wait on its PVE task, and the driver stops the task with
// DELETE /nodes/{node}/tasks/{upid}, as PVE's own Stop button does (the
// simulator validates every request against PVE's schema). A cancelled
// create leaves no guest (the driver destroys what the interrupted task
// made); a cancelled graceful stop leaves the guest running.
func TestLongOperationCancel(t *testing.T) {
	schema, err := pvesim.LoadSchema(schemaFile(t))
	if err != nil {
		t.Fatal(err)
	}
	const token, secret = "root@pam!subbus", "0d9a3c1e-5b7f-4e2a-9c8d-1f2e3d4c5b6a"
	sim, err := pvesim.New(pvesim.Options{Schema: schema, Tokens: []string{token + "=" + secret}, Password: "x", AuthFailureDelay: -1})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(sim.Handler())
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.StartTLS()
	t.Cleanup(srv.Close)
	sum := sha256.Sum256(srv.Certificate().Raw)
	fp := make([]string, len(sum))
	for i, b := range sum {
		fp[i] = fmt.Sprintf("%02X", b)
	}
	o := proxmox.DefaultOptions()
	o.URL, o.TokenID, o.TokenSecret, o.Fingerprint = srv.URL, token, secret, strings.Join(fp, ":")
	o.TaskPollInterval = config.Duration(50 * time.Millisecond)
	o.EventPollInterval = config.Duration(200 * time.Millisecond)
	o.ReconcileTimeout = config.Duration(30 * time.Second)
	host := clitest.Unique("lo-px")
	f := clitest.StartFleet(t, host, time.Minute, manager.New(proxmox.New(o), manager.Options{Host: host, CacheTTL: -1}))
	const iso = "local:iso/debian-12.7.0-amd64-netinst.iso"

	task := func(typ string) (pvesim.TaskInfo, bool) {
		var last pvesim.TaskInfo
		found := false
		for _, ti := range sim.Tasks() {
			if ti.Type == typ {
				last, found = ti, true
			}
		}
		return last, found
	}
	ok := func(t *testing.T, args ...string) string {
		t.Helper()
		return clitest.SubbusWithin(t, time.Minute, f.URL, args...).Want(t, 0, strings.Join(args, " ")).Stdout
	}
	begin := func(t *testing.T, args ...string) messages.Operation {
		t.Helper()
		var op messages.Operation
		if err := json.Unmarshal([]byte(ok(t, append(args, "--no-wait", "--json")...)), &op); err != nil || op.ID == "" {
			t.Fatalf("%v --no-wait: %v %+v", args, err, op)
		}
		return op
	}
	cancelAndWait := func(t *testing.T, id string) {
		t.Helper()
		ok(t, "ops", "cancel", id)
		r := clitest.SubbusWithin(t, time.Minute, f.URL, "ops", "wait", id, "--timeout", "30s").Want(t, cli.ExitTimeout, "ops wait")
		if !strings.Contains(r.Stdout, "cancelled after") {
			t.Fatalf("ops wait %s:\n%s", id, r.Stdout)
		}
	}

	t.Run("create", func(t *testing.T) {
		sim.HangTasks("qmcreate", true)
		defer sim.HangTasks("qmcreate", false)
		op := begin(t, "proxmox", "create", "lo-px-create", "--image", iso)
		testenv.Eventually(t, 10*time.Second, func() error {
			if ti, ok := task("qmcreate"); !ok || !ti.Running {
				return fmt.Errorf("no running qmcreate task: %+v", ti)
			}
			return nil
		})
		cancelAndWait(t, op.ID)
		ti, _ := task("qmcreate")
		if ti.Running || !strings.Contains(ti.ExitStatus, "interrupt") {
			t.Fatalf("qmcreate task after the cancel: running %v, exit status %q", ti.Running, ti.ExitStatus)
		}
		testenv.Eventually(t, 30*time.Second, func() error {
			for _, g := range sim.Guests() {
				if g.Name == "lo-px-create" {
					return fmt.Errorf("guest %d still there (%s, lock %q)", g.VMID, g.Status, g.Lock)
				}
			}
			return nil
		})
	})

	t.Run("graceful stop", func(t *testing.T) {
		ok(t, "proxmox", "create", "lo-px-stop", "--image", iso)
		ok(t, "proxmox", "start", "lo-px-stop")
		var vmid int
		for _, g := range sim.Guests() {
			if g.Name == "lo-px-stop" {
				vmid = g.VMID
			}
		}
		if err := sim.SetGuestIgnoresShutdown(vmid, true); err != nil {
			t.Fatal(err)
		}
		op := begin(t, "proxmox", "stop", "lo-px-stop", "--timeout", "10m")
		testenv.Eventually(t, 10*time.Second, func() error {
			if ti, ok := task("qmshutdown"); !ok || !ti.Running {
				return fmt.Errorf("no running qmshutdown task: %+v", ti)
			}
			return nil
		})
		cancelAndWait(t, op.ID)
		if ti, _ := task("qmshutdown"); ti.Running {
			t.Fatalf("qmshutdown still running after the cancel: %+v", ti)
		}
		if out := ok(t, "proxmox", "get", "lo-px-stop"); !strings.Contains(out, "running") {
			t.Fatalf("guest after a cancelled stop:\n%s", out)
		}
		ok(t, "proxmox", "delete", "lo-px-stop", "--force")
	})

	// Every request was valid for PVE, the task DELETEs included.
	stopped := 0
	for _, r := range sim.Requests() {
		if r.Template == "" || r.Status == 400 {
			t.Errorf("request not valid for PVE 9: %s %s %v -> %d", r.Method, r.Path, r.Params, r.Status)
		}
		if r.Method == "DELETE" && r.Template == "/nodes/{node}/tasks/{upid}" {
			stopped++
		}
	}
	if stopped != 2 {
		t.Errorf("%d task stops (DELETE /nodes/{node}/tasks/{upid}), want 2", stopped)
	}
}
