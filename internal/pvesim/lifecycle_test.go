package pvesim

import (
	"fmt"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/subbus/subbus/internal/testenv"
)

func status(t *testing.T, c *client, kind string, vmid int) map[string]any {
	t.Helper()
	return c.ok("GET", fmt.Sprintf("/nodes/pve1/%s/%d/status/current", kind, vmid), nil).data().(map[string]any)
}

// TestQemuLifecycle: create, start, lifecycle errors arriving in the
// task's exitstatus (async) or as 500 (sync), shutdown, delete.
func TestQemuLifecycle(t *testing.T) {
	srv := startSim(t, Options{})
	c := tokenClient(t, srv)
	c.json = true // go-proxmox sends JSON bodies
	c.mustTaskOK("POST", "/nodes/pve1/qemu", map[string]any{"vmid": 100, "name": "web", "memory": "1024", "cores": 2,
		"net0": "virtio,bridge=vmbr0", "scsi0": "local-lvm:4", "agent": "1", "tags": "b;a,a"})
	cfg := c.ok("GET", "/nodes/pve1/qemu/100/config", nil).data().(map[string]any)
	if cfg["name"] != "web" || cfg["cores"] != float64(2) || cfg["memory"] != "1024" || cfg["tags"] != "a;b" {
		t.Fatalf("config %v", cfg)
	}
	if !strings.HasPrefix(cfg["net0"].(string), "virtio=BC:24:11:") || cfg["scsi0"] != "local-lvm:vm-100-disk-0,size=4G" {
		t.Fatalf("net0/scsi0 not as PVE writes them: %v / %v", cfg["net0"], cfg["scsi0"])
	}
	if st := status(t, c, "qemu", 100); st["status"] != "stopped" {
		t.Fatalf("status %v", st)
	}

	steps := []struct {
		name, method, path string
		params             map[string]any
		sync               string // non-empty: a synchronous 500 with this reason
		exit               string // else the task's exit status
		after              string // status afterwards
	}{
		{"stop when stopped is OK", "POST", "status/stop", nil, "", "OK", "stopped"},
		{"shutdown when stopped is OK", "POST", "status/shutdown", nil, "", "OK", "stopped"},
		{"reset when stopped", "POST", "status/reset", nil, "VM 100 not running", "", "stopped"},
		{"start", "POST", "status/start", nil, "", "OK", "running"},
		{"start again", "POST", "status/start", nil, "", "VM 100 already running", "running"},
		{"delete while running", "DELETE", "", nil, "VM 100 is running - destroy failed", "", "running"},
		{"suspend", "POST", "status/suspend", nil, "", "OK", "running"},
		{"shutdown paused", "POST", "status/shutdown", nil, "VM is paused - cannot shutdown", "", "running"},
		{"resume", "POST", "status/resume", nil, "", "OK", "running"},
		{"reboot", "POST", "status/reboot", nil, "", "OK", "running"},
		{"shutdown", "POST", "status/shutdown", map[string]any{"timeout": 30, "forceStop": true}, "", "OK", "stopped"},
		{"template", "POST", "template", nil, "", "OK", "stopped"},
		{"start template", "POST", "status/start", nil, "", "you can't start a vm if it's a template", "stopped"},
	}
	for _, st := range steps {
		path := "/nodes/pve1/qemu/100"
		if st.path != "" {
			path += "/" + st.path
		}
		r := c.do(st.method, path, st.params)
		if st.sync != "" {
			if r.Code != 500 || r.Reason != st.sync {
				t.Fatalf("%s: got %d %q, want 500 %q", st.name, r.Code, r.Reason, st.sync)
			}
		} else {
			if r.Code != 200 {
				t.Fatalf("%s: %d %q", st.name, r.Code, r.Reason)
			}
			if exit := c.wait(r.str()); exit != st.exit {
				t.Fatalf("%s: exitstatus %q, want %q", st.name, exit, st.exit)
			}
		}
		if got := status(t, c, "qemu", 100)["status"]; got != st.after {
			t.Fatalf("%s: status %v, want %s", st.name, got, st.after)
		}
	}
	if st := status(t, c, "qemu", 100); st["template"] != float64(1) {
		t.Fatalf("template flag missing: %v", st)
	}
	cfg = c.ok("GET", "/nodes/pve1/qemu/100/config", nil).data().(map[string]any)
	if cfg["scsi0"] != "local-lvm:base-100-disk-0,size=4G" {
		t.Fatalf("template disk %v", cfg["scsi0"])
	}

	// Linked clone of the template, then a full clone of the clone.
	c.mustTaskOK("POST", "/nodes/pve1/qemu/100/clone", map[string]any{"newid": 101, "name": "linked"})
	cfg = c.ok("GET", "/nodes/pve1/qemu/101/config", nil).data().(map[string]any)
	if cfg["scsi0"] != "local-lvm:base-100-disk-0/vm-101-disk-0,size=4G" || cfg["name"] != "linked" || cfg["net0"] == "" {
		t.Fatalf("linked clone config %v", cfg)
	}
	r := c.do("POST", "/nodes/pve1/qemu/101/clone", map[string]any{"newid": 102, "full": false})
	if r.Code != 500 || !strings.HasPrefix(r.Reason, "Linked clone feature is not supported for") {
		t.Fatalf("linked clone of a non-template: %d %q", r.Code, r.Reason)
	}
	c.mustTaskOK("POST", "/nodes/pve1/qemu/101/clone", map[string]any{"newid": 102, "full": true, "name": "full"})
	if r := c.do("POST", "/nodes/pve1/qemu/101/clone", map[string]any{"newid": 102}); r.Code != 500 ||
		r.Reason != "unable to create VM 102: config file already exists" {
		t.Fatalf("clone onto an existing vmid: %d %q", r.Code, r.Reason)
	}

	// Delete with purge removes the guest and its disks.
	c.mustTaskOK("DELETE", "/nodes/pve1/qemu/102", map[string]any{"purge": 1, "destroy-unreferenced-disks": 1})
	if r := c.do("GET", "/nodes/pve1/qemu/102/config", nil); r.Code != 500 {
		t.Fatalf("deleted VM still answers: %d", r.Code)
	}
	vols := c.ok("GET", "/nodes/pve1/storage/local-lvm/content", map[string]any{"vmid": 102}).data().([]any)
	if len(vols) != 0 {
		t.Fatalf("volumes of 102 left: %v", vols)
	}
	if r := c.do("POST", "/nodes/pve1/qemu", map[string]any{"vmid": 101}); r.Code != 500 ||
		r.Reason != "unable to create VM 101 - VM 101 already exists on node 'pve1'" {
		t.Fatalf("create over existing: %d %q", r.Code, r.Reason)
	}
}

func TestLXCLifecycle(t *testing.T) {
	srv := startSim(t, Options{Nodes: []string{"pve1", "pve2"}})
	c := tokenClient(t, srv)
	tmpl := "local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst"
	// PVE's default rootfs storage is "local" (a dir storage without
	// rootdir content here): refused before any task, nothing made.
	if r := c.do("POST", "/nodes/pve1/lxc", map[string]any{"vmid": 200, "ostemplate": tmpl}); r.Code != 400 ||
		r.Body["errors"].(map[string]any)["storage"] != "storage 'local' does not support container directories" {
		t.Fatalf("create with default rootfs: %d %s", r.Code, r.Raw)
	}
	if r := c.do("POST", "/nodes/pve1/lxc", map[string]any{"vmid": 200, "ostemplate": tmpl, "rootfs": "nfs:2"}); r.Code != 500 ||
		r.Reason != "storage 'nfs' does not exist" {
		t.Fatalf("create on a missing storage: %d %s", r.Code, r.Raw)
	}
	if _, ok := srv.Guest(200); ok {
		t.Fatal("failed create left a guest behind")
	}
	if exit := c.task("POST", "/nodes/pve1/lxc", map[string]any{"vmid": 200, "ostemplate": "local:vztmpl/nope.tar.zst",
		"rootfs": "local-lvm:2"}); exit != "unable to create CT 200 - volume 'local:vztmpl/nope.tar.zst' does not exist" {
		t.Fatalf("create from a missing template: %q", exit)
	}
	c.mustTaskOK("POST", "/nodes/pve1/lxc", map[string]any{"vmid": 200, "ostemplate": tmpl, "hostname": "ct1",
		"rootfs": "local-lvm:2", "net0": "name=eth0,bridge=vmbr0,ip=dhcp", "memory": 256, "password": "secret1"})
	cfg := c.ok("GET", "/nodes/pve1/lxc/200/config", nil).data().(map[string]any)
	if cfg["hostname"] != "ct1" || cfg["ostype"] != "debian" || cfg["memory"] != float64(256) ||
		cfg["rootfs"] != "local-lvm:vm-200-disk-0,size=2G" || !strings.Contains(cfg["net0"].(string), ",hwaddr=BC:24:11:") {
		t.Fatalf("CT config %v", cfg)
	}
	if _, has := cfg["password"]; has {
		t.Fatal("password stored in the config")
	}
	steps := []struct {
		name, method, path string
		sync, exit, after  string
	}{
		{"stop stopped", "POST", "status/stop", "CT 200 not running", "", "stopped"},
		{"shutdown stopped", "POST", "status/shutdown", "CT 200 not running", "", "stopped"},
		{"start", "POST", "status/start", "", "OK", "running"},
		{"start again", "POST", "status/start", "CT 200 already running", "", "running"},
		{"delete running", "DELETE", "", "unable to destroy CT 200 - container is running", "", "running"},
		{"reboot", "POST", "status/reboot", "", "OK", "running"},
		{"shutdown", "POST", "status/shutdown", "", "OK", "stopped"},
		{"reboot stopped", "POST", "status/reboot", "VM 200 not running", "", "stopped"},
	}
	for _, st := range steps {
		path := "/nodes/pve1/lxc/200"
		if st.path != "" {
			path += "/" + st.path
		}
		r := c.do(st.method, path, nil)
		if st.sync != "" {
			if r.Code != 500 || r.Reason != st.sync {
				t.Fatalf("%s: %d %q, want 500 %q", st.name, r.Code, r.Reason, st.sync)
			}
		} else if r.Code != 200 {
			t.Fatalf("%s: %d %q", st.name, r.Code, r.Reason)
		} else if exit := c.wait(r.str()); exit != st.exit {
			t.Fatalf("%s: exit %q, want %q", st.name, exit, st.exit)
		}
		if got := status(t, c, "lxc", 200)["status"]; got != st.after {
			t.Fatalf("%s: status %v, want %s", st.name, got, st.after)
		}
	}
	c.mustTaskOK("POST", "/nodes/pve1/lxc/200/status/start", nil)
	ifs := c.ok("GET", "/nodes/pve1/lxc/200/interfaces", nil).data().([]any)
	if len(ifs) != 2 || ifs[1].(map[string]any)["inet"] != "192.0.2.100/24" {
		t.Fatalf("interfaces %v", ifs)
	}
	c.mustTaskOK("POST", "/nodes/pve1/lxc/200/status/stop", nil)
	if ifs := c.ok("GET", "/nodes/pve1/lxc/200/interfaces", nil).data(); ifs != nil {
		t.Fatalf("interfaces of a stopped CT %v", ifs)
	}
	// LXC has no exec in the API.
	if r := c.do("POST", "/nodes/pve1/lxc/200/agent/exec", map[string]any{"command": "ls"}); r.Code != 501 {
		t.Fatalf("lxc agent/exec: %d %q", r.Code, r.Reason)
	}
	c.mustTaskOK("POST", "/nodes/pve1/lxc/200/snapshot", map[string]any{"snapname": "s1"})
	c.mustTaskOK("POST", "/nodes/pve1/lxc/200/clone", map[string]any{"newid": 201, "hostname": "ct2"})
	if g, _ := srv.Guest(201); g.Name != "ct2" || g.Kind != "lxc" {
		t.Fatalf("clone %+v", g)
	}
	// A CT on another node is not found through this node.
	if r := c.do("GET", "/nodes/pve2/lxc/200/status/current", nil); r.Code != 500 ||
		r.Reason != "Configuration file 'nodes/pve2/lxc/200.conf' does not exist" {
		t.Fatalf("wrong node: %d %q", r.Code, r.Reason)
	}
	if r := c.do("POST", "/nodes/pve2/lxc", map[string]any{"vmid": 200, "ostemplate": tmpl}); r.Code != 500 ||
		r.Reason != "CT 200 already exists on node 'pve1'" {
		t.Fatalf("CT create over existing: %d %q", r.Code, r.Reason)
	}
	c.mustTaskOK("DELETE", "/nodes/pve1/lxc/200", map[string]any{"purge": 1})
	res := c.ok("GET", "/cluster/resources", map[string]any{"type": "vm"}).data().([]any)
	if len(res) != 1 || res[0].(map[string]any)["id"] != "lxc/201" {
		t.Fatalf("resources %v", res)
	}
}

// TestLocks: a guest locked by a running snapshot task refuses other
// operations, synchronously (config PUT, clone) or in the task.
func TestLocks(t *testing.T) {
	srv := startSim(t, Options{})
	c := tokenClient(t, srv)
	if err := srv.CreateGuest(GuestSpec{VMID: 100, Name: "vm", Config: map[string]any{"scsi0": "local-lvm:1"}}); err != nil {
		t.Fatal(err)
	}
	srv.HangTasks("qmsnapshot", true)
	snapUPID := c.ok("POST", "/nodes/pve1/qemu/100/snapshot", map[string]any{"snapname": "s1"}).str()
	testenv.Eventually(t, 5*time.Second, func() error {
		if g, _ := srv.Guest(100); g.Lock != "snapshot" {
			return fmt.Errorf("lock %q", g.Lock)
		}
		return nil
	})
	if cfg := c.ok("GET", "/nodes/pve1/qemu/100/config", nil).data().(map[string]any); cfg["lock"] != "snapshot" {
		t.Fatalf("config lock %v", cfg["lock"])
	}
	if st := status(t, c, "qemu", 100); st["lock"] != "snapshot" {
		t.Fatalf("status lock %v", st["lock"])
	}
	if exit := c.task("POST", "/nodes/pve1/qemu/100/status/start", nil); exit != "VM is locked (snapshot)" {
		t.Fatalf("start while locked: %q", exit)
	}
	if exit := c.task("POST", "/nodes/pve1/qemu/100/config", map[string]any{"cores": 2}); exit != "VM is locked (snapshot)" {
		t.Fatalf("config POST while locked: %q", exit)
	}
	for _, call := range []struct {
		method, path string
		params       map[string]any
	}{{"PUT", "config", map[string]any{"cores": 2}}, {"POST", "clone", map[string]any{"newid": 300}}} {
		r := c.do(call.method, "/nodes/pve1/qemu/100/"+call.path, call.params)
		if r.Code != 500 || r.Reason != "VM is locked (snapshot)" {
			t.Fatalf("%s %s while locked: %d %q", call.method, call.path, r.Code, r.Reason)
		}
	}
	// skiplock overrides the lock (root only in PVE).
	if r := c.do("PUT", "/nodes/pve1/qemu/100/config", map[string]any{"cores": 2, "skiplock": 1}); r.Code != 200 {
		t.Fatalf("PUT with skiplock: %d %q", r.Code, r.Reason)
	}
	// Stopping the hung task ends it with PVE's interrupt message.
	c.ok("DELETE", "/nodes/pve1/tasks/"+snapUPID, nil)
	if exit := c.wait(snapUPID); exit != "received interrupt" {
		t.Fatalf("stopped task: %q", exit)
	}
	srv.HangTasks("qmsnapshot", false)
	if g, _ := srv.Guest(100); g.Lock != "" || len(g.Snapshots) != 0 {
		t.Fatalf("after interrupted snapshot: lock %q snapshots %v", g.Lock, g.Snapshots)
	}
	log := c.ok("GET", "/nodes/pve1/tasks/"+snapUPID+"/log", nil)
	lines := log.data().([]any)
	if last := lines[len(lines)-1].(map[string]any)["t"]; last != "TASK ERROR: received interrupt" || log.Body["total"] == nil {
		t.Fatalf("log %v", log.Raw)
	}
}

// TestHungCreateIsCleanedUp: a create that never finishes holds a guest
// locked "create"; stopping the task removes it (nothing left behind).
func TestHungCreateIsCleanedUp(t *testing.T) {
	srv := startSim(t, Options{LockTimeout: 200 * time.Millisecond})
	c := tokenClient(t, srv)
	srv.HangTasks("qmcreate", true)
	upid := c.ok("POST", "/nodes/pve1/qemu", map[string]any{"vmid": 105, "scsi0": "local-lvm:1"}).str()
	waitFlock(t, srv.Sim, "qemu", 105)
	res := c.ok("GET", "/cluster/resources", map[string]any{"type": "vm"}).data().([]any)
	if len(res) != 1 || res[0].(map[string]any)["lock"] != "create" {
		t.Fatalf("resources during create: %v", res)
	}
	if r := c.do("DELETE", "/nodes/pve1/qemu/105", nil); r.Code != 200 {
		t.Fatalf("delete: %d", r.Code)
	} else if exit := c.wait(r.str()); exit != "can't lock file '/var/lock/qemu-server/lock-105.conf' - got timeout" {
		// The create task holds the config file lock (PVE's flock).
		t.Fatalf("delete while creating: %q", exit)
	}
	if r := c.do("PUT", "/nodes/pve1/qemu/105/config", map[string]any{"cores": 2}); r.Code != 500 ||
		r.Reason != "can't lock file '/var/lock/qemu-server/lock-105.conf' - got timeout" {
		t.Fatalf("PUT config while creating: %d %q", r.Code, r.Reason)
	}
	c.ok("DELETE", "/nodes/pve1/tasks/"+upid, nil)
	if exit := c.wait(upid); exit != "unable to create VM 105 - received interrupt" {
		t.Fatalf("exit %q", exit)
	}
	if _, ok := srv.Guest(105); ok {
		t.Fatal("interrupted create left the guest")
	}
	tasks := c.ok("GET", "/nodes/pve1/tasks", map[string]any{"vmid": 105, "source": "all"}).data().([]any)
	if len(tasks) != 2 {
		t.Fatalf("node tasks %v", tasks)
	}
}

func TestSnapshots(t *testing.T) {
	srv := startSim(t, Options{})
	c := tokenClient(t, srv)
	if err := srv.CreateGuest(GuestSpec{VMID: 100, Status: "running", Config: map[string]any{"cores": 1}}); err != nil {
		t.Fatal(err)
	}
	c.mustTaskOK("POST", "/nodes/pve1/qemu/100/snapshot", map[string]any{"snapname": "s1", "description": "first", "vmstate": 1})
	c.ok("PUT", "/nodes/pve1/qemu/100/config", map[string]any{"cores": 4})
	c.mustTaskOK("POST", "/nodes/pve1/qemu/100/snapshot", map[string]any{"snapname": "s2"})
	if exit := c.task("POST", "/nodes/pve1/qemu/100/snapshot", map[string]any{"snapname": "s2"}); exit != "snapshot name 's2' already used" {
		t.Fatalf("duplicate: %q", exit)
	}
	if r := c.do("POST", "/nodes/pve1/qemu/100/snapshot", map[string]any{"snapname": "current"}); r.Code != 500 ||
		r.Reason != "unable to use snapshot name 'current' (reserved name)" {
		t.Fatalf("current: %d %q", r.Code, r.Reason)
	}
	list := c.ok("GET", "/nodes/pve1/qemu/100/snapshot", nil).data().([]any)
	names := []string{}
	for _, e := range list {
		names = append(names, e.(map[string]any)["name"].(string))
	}
	if strings.Join(names, ",") != "s1,s2,current" {
		t.Fatalf("snapshot list %v", names)
	}
	cur := list[2].(map[string]any)
	if cur["parent"] != "s2" || cur["description"] != "You are here!" || list[1].(map[string]any)["parent"] != "s1" ||
		list[0].(map[string]any)["vmstate"] != float64(1) {
		t.Fatalf("snapshot entries %v", list)
	}
	// Rollback to s1 (with vmstate: running again, 1 core).
	c.mustTaskOK("POST", "/nodes/pve1/qemu/100/snapshot/s1/rollback", nil)
	g, _ := srv.Guest(100)
	if g.Config["cores"] != "1" || g.Status != "running" || g.Config["parent"] != "s1" {
		t.Fatalf("after rollback %+v", g)
	}
	if exit := c.task("POST", "/nodes/pve1/qemu/100/snapshot/nope/rollback", nil); exit != "snapshot 'nope' does not exist" {
		t.Fatalf("rollback missing: %q", exit)
	}
	c.mustTaskOK("DELETE", "/nodes/pve1/qemu/100/snapshot/s1", nil)
	list = c.ok("GET", "/nodes/pve1/qemu/100/snapshot", nil).data().([]any)
	if len(list) != 2 || list[0].(map[string]any)["name"] != "s2" || list[0].(map[string]any)["parent"] != nil {
		t.Fatalf("after delete %v", list)
	}
}

func TestShutdownTimeout(t *testing.T) {
	srv := startSim(t, Options{})
	c := tokenClient(t, srv)
	for _, id := range []int{100, 101} {
		if err := srv.CreateGuest(GuestSpec{VMID: id, Status: "running"}); err != nil {
			t.Fatal(err)
		}
		if err := srv.SetGuestIgnoresShutdown(id, true); err != nil {
			t.Fatal(err)
		}
	}
	if exit := c.task("POST", "/nodes/pve1/qemu/100/status/shutdown", map[string]any{"timeout": 1}); exit != "VM quit/powerdown failed - got timeout" {
		t.Fatalf("shutdown of a hung guest: %q", exit)
	}
	if g, _ := srv.Guest(100); g.Status != "running" {
		t.Fatal("timed-out shutdown stopped the VM")
	}
	if exit := c.task("POST", "/nodes/pve1/qemu/101/status/shutdown", map[string]any{"timeout": 1, "forceStop": 1}); exit != "WARNINGS: 1" {
		t.Fatalf("forced shutdown: %q", exit)
	}
	if g, _ := srv.Guest(101); g.Status != "stopped" {
		t.Fatal("forced shutdown left the VM running")
	}
}

func TestGuestAgent(t *testing.T) {
	srv := startSim(t, Options{})
	c := tokenClient(t, srv)
	if err := srv.CreateGuest(GuestSpec{VMID: 100, Name: "vm1", Status: "running", Config: map[string]any{"agent": "enabled=1"}}); err != nil {
		t.Fatal(err)
	}
	if err := srv.CreateGuest(GuestSpec{VMID: 101, Status: "running"}); err != nil {
		t.Fatal(err)
	}
	if err := srv.CreateGuest(GuestSpec{VMID: 102, Config: map[string]any{"agent": 1}}); err != nil {
		t.Fatal(err)
	}
	errs := []struct {
		vmid   int
		reason string
	}{{101, "No QEMU guest agent configured"}, {102, "VM 102 is not running"}}
	for _, e := range errs {
		if r := c.do("POST", fmt.Sprintf("/nodes/pve1/qemu/%d/agent/ping", e.vmid), nil); r.Code != 500 || r.Reason != e.reason {
			t.Fatalf("agent ping %d: %d %q", e.vmid, r.Code, r.Reason)
		}
	}
	c.ok("POST", "/nodes/pve1/qemu/100/agent/ping", nil)
	tests := []struct {
		cmd    []string
		input  string
		exit   float64
		stdout string
	}{
		{[]string{"echo", "hello", "world"}, "", 0, "hello world\n"},
		{[]string{"hostname"}, "", 0, "vm1\n"},
		{[]string{"cat"}, "piped", 0, "piped"},
		{[]string{"false"}, "", 1, ""},
		{[]string{"/no/such"}, "", 127, ""},
	}
	for _, tt := range tests {
		for _, asJSON := range []bool{false, true} {
			c.json = asJSON
			params := map[string]any{"command": tt.cmd}
			if tt.input != "" {
				params["input-data"] = tt.input
			}
			pid := c.ok("POST", "/nodes/pve1/qemu/100/agent/exec", params).data().(map[string]any)["pid"]
			var st map[string]any
			testenv.Eventually(t, 5*time.Second, func() error {
				st = c.ok("GET", "/nodes/pve1/qemu/100/agent/exec-status", map[string]any{"pid": pid}).data().(map[string]any)
				if st["exited"] != float64(1) {
					return fmt.Errorf("not exited")
				}
				return nil
			})
			out, _ := st["out-data"].(string)
			if st["exitcode"] != tt.exit || out != tt.stdout {
				t.Errorf("%v (json %v): %v", tt.cmd, asJSON, st)
			}
		}
	}
	// sleep runs for a while: exec-status says not exited first.
	pid := c.ok("POST", "/nodes/pve1/qemu/100/agent/exec", map[string]any{"command": []string{"sleep", "30"}}).data().(map[string]any)["pid"]
	if st := c.ok("GET", "/nodes/pve1/qemu/100/agent/exec-status", map[string]any{"pid": pid}).data().(map[string]any); st["exited"] != float64(0) {
		t.Fatalf("sleep exited at once: %v", st)
	}
}

// TestCountersMove: a running guest's counters grow, a stopped one's are 0.
func TestCountersMove(t *testing.T) {
	srv := startSim(t, Options{})
	c := tokenClient(t, srv)
	if err := srv.CreateGuest(GuestSpec{VMID: 100, Status: "running", Config: map[string]any{"memory": 2048}}); err != nil {
		t.Fatal(err)
	}
	if err := srv.CreateGuest(GuestSpec{Kind: "lxc", VMID: 101, Status: "stopped"}); err != nil {
		t.Fatal(err)
	}
	first := status(t, c, "qemu", 100)
	testenv.Eventually(t, 5*time.Second, func() error {
		now := status(t, c, "qemu", 100)
		for _, k := range []string{"netin", "netout", "diskread", "diskwrite"} {
			if now[k].(float64) <= first[k].(float64) {
				return fmt.Errorf("%s did not grow: %v -> %v", k, first[k], now[k])
			}
		}
		return nil
	})
	if first["cpu"].(float64) <= 0 || first["mem"].(float64) <= 0 || first["maxmem"] != float64(2048<<20) {
		t.Fatalf("running usage %v", first)
	}
	ct := status(t, c, "lxc", 101)
	if ct["cpu"] != float64(0) || ct["netin"] != float64(0) || ct["status"] != "stopped" {
		t.Fatalf("stopped usage %v", ct)
	}
}

// TestOutOfBandChanges: direct mutations show up in the API.
func TestOutOfBandChanges(t *testing.T) {
	srv := startSim(t, Options{Nodes: []string{"pve1", "pve2"}})
	c := tokenClient(t, srv)
	if err := srv.CreateGuest(GuestSpec{VMID: 300, Node: "pve2", Name: "ui-made"}); err != nil {
		t.Fatal(err)
	}
	find := func() map[string]any {
		for _, e := range c.ok("GET", "/cluster/resources", map[string]any{"type": "vm"}).data().([]any) {
			if m := e.(map[string]any); m["vmid"] == float64(300) {
				return m
			}
		}
		return nil
	}
	if e := find(); e == nil || e["node"] != "pve2" || e["status"] != "stopped" || e["name"] != "ui-made" {
		t.Fatalf("resource %v", e)
	}
	if err := srv.SetGuestStatus(300, "running"); err != nil {
		t.Fatal(err)
	}
	if e := find(); e["status"] != "running" {
		t.Fatalf("after direct start %v", e)
	}
	if err := srv.DeleteGuest(300); err != nil {
		t.Fatal(err)
	}
	if e := find(); e != nil {
		t.Fatalf("after direct delete %v", e)
	}
}

func TestFaults(t *testing.T) {
	srv := startSim(t, Options{Nodes: []string{"pve1", "pve2", "pve3"}})
	c := tokenClient(t, srv)
	if err := srv.CreateGuest(GuestSpec{VMID: 100, Node: "pve2"}); err != nil {
		t.Fatal(err)
	}
	t.Run("5xx", func(t *testing.T) {
		remove, err := srv.AddFault(Fault{Path: "^/version$", Status: 503, Message: "Service Unavailable", Count: 2})
		if err != nil {
			t.Fatal(err)
		}
		defer remove()
		for i := 0; i < 2; i++ {
			if r := c.do("GET", "/version", nil); r.Code != 503 || r.Reason != "Service Unavailable" {
				t.Fatalf("fault %d: %d %q", i, r.Code, r.Reason)
			}
		}
		c.ok("GET", "/version", nil)
	})
	t.Run("latency", func(t *testing.T) {
		remove, _ := srv.AddFault(Fault{Method: "GET", Path: "^/nodes$", Latency: 200 * time.Millisecond})
		defer remove()
		start := time.Now()
		c.ok("GET", "/nodes", nil)
		if d := time.Since(start); d < 200*time.Millisecond {
			t.Fatalf("answered after %v", d)
		}
	})
	t.Run("dropped connection", func(t *testing.T) {
		remove, _ := srv.AddFault(Fault{Path: "^/cluster/", Drop: true})
		defer remove()
		req, _ := newTokenRequest(srv, "GET", "/cluster/status")
		if res, err := insecure.Do(req); err == nil {
			res.Body.Close()
			t.Fatalf("dropped request answered %s", res.Status)
		}
	})
	t.Run("node offline", func(t *testing.T) {
		if err := srv.SetNodeOnline("pve2", false); err != nil {
			t.Fatal(err)
		}
		if r := c.do("GET", "/nodes/pve2/qemu/100/status/current", nil); r.Code != 595 || r.Reason != "No route to host" {
			t.Fatalf("offline node: %d %q", r.Code, r.Reason)
		}
		st := c.ok("GET", "/cluster/status", nil).data().([]any)
		if cl := st[0].(map[string]any); cl["quorate"] != float64(1) {
			t.Fatalf("2 of 3 online is quorate: %v", cl)
		}
		if err := srv.SetNodeOnline("pve3", false); err != nil {
			t.Fatal(err)
		}
		st = c.ok("GET", "/cluster/status", nil).data().([]any)
		if cl := st[0].(map[string]any); cl["quorate"] != float64(0) || st[2].(map[string]any)["online"] != float64(0) {
			t.Fatalf("1 of 3 online: %v", st)
		}
		for _, e := range c.ok("GET", "/cluster/resources", nil).data().([]any) {
			m := e.(map[string]any)
			if m["node"] == "pve2" && m["type"] != "node" && m["status"] != "unknown" {
				t.Fatalf("resource on offline node: %v", m)
			}
			if m["type"] == "node" && m["node"] == "pve2" && m["status"] != "offline" {
				t.Fatalf("offline node: %v", m)
			}
		}
		_ = srv.SetNodeOnline("pve2", true)
		_ = srv.SetNodeOnline("pve3", true)
		c.ok("GET", "/nodes/pve2/qemu/100/status/current", nil)
	})
}

func TestControlAPI(t *testing.T) {
	srv := startSim(t, Options{Control: true, Nodes: []string{"pve1", "pve2"}})
	c := tokenClient(t, srv)
	c.json = true
	c.base = srv.URL + "/pvesim"
	c.ok("POST", "/guests", map[string]any{"vmid": 150, "kind": "lxc", "node": "pve2", "name": "ui", "status": "running"})
	c.ok("POST", "/guests/150/config", map[string]any{"key": "lock", "value": "backup"})
	c.ok("POST", "/nodes/pve1/online", map[string]any{"online": false})
	c.ok("POST", "/hang", map[string]any{"type": "vzstop", "hang": true})
	if g, _ := srv.Guest(150); g.Kind != "lxc" || g.Node != "pve2" || g.Status != "running" || g.Lock != "backup" {
		t.Fatalf("guest %+v", g)
	}
	c.ok("POST", "/guests/150/status", map[string]any{"status": "stopped"})
	c.ok("DELETE", "/guests/150", nil)
	if _, ok := srv.Guest(150); ok {
		t.Fatal("control delete did nothing")
	}
	if r := c.do("POST", "/guests/150/status", map[string]any{"status": "running"}); r.Code != 400 {
		t.Fatalf("missing guest: %d", r.Code)
	}
	if r := (&client{t: t, base: srv.URL + "/pvesim", header: http.Header{}}).do("DELETE", "/faults", nil); r.Code != 401 {
		t.Fatalf("unauthenticated control call: %d", r.Code)
	}
	// Without Options.Control the prefix is an unknown path.
	srv2 := startSim(t, Options{})
	c2 := tokenClient(t, srv2)
	c2.base = srv2.URL + "/pvesim"
	if r := c2.do("DELETE", "/faults", nil); r.Code != 501 {
		t.Fatalf("control API without Control: %d", r.Code)
	}
}

func TestSeed(t *testing.T) {
	seed, err := LoadSeed("testdata/seed.yaml")
	if err != nil {
		t.Fatal(err)
	}
	srv := startSim(t, Options{Seed: seed, Nodes: seed.Nodes})
	c := tokenClient(t, srv)
	res := c.ok("GET", "/cluster/resources", map[string]any{"type": "vm"}).data().([]any)
	if len(res) != 3 {
		t.Fatalf("resources %v", res)
	}
	web := c.ok("GET", "/nodes/pve1/qemu/100/config", nil).data().(map[string]any)
	if web["scsi0"] != "local-lvm:vm-100-disk-0,size=8G" || web["parent"] != "before-upgrade" || web["cores"] != float64(2) {
		t.Fatalf("seeded VM %v", web)
	}
	if st := status(t, c, "qemu", 100); st["status"] != "running" {
		t.Fatalf("seeded VM status %v", st)
	}
	if st := status(t, c, "qemu", 900); st["template"] != float64(1) {
		t.Fatalf("seeded template %v", st)
	}
	iso := c.ok("GET", "/nodes/pve2/storage/local/content", map[string]any{"content": "iso"}).data().([]any)
	if len(iso) != 2 {
		t.Fatalf("isos on pve2: %v", iso)
	}
	if vn := c.ok("GET", "/cluster/sdn/vnets", nil).data().([]any); len(vn) != 1 || vn[0].(map[string]any)["vnet"] != "vnet1" {
		t.Fatalf("vnets %v", vn)
	}
	// Unknown keys are errors.
	bad := t.TempDir() + "/bad.yaml"
	if err := os.WriteFile(bad, []byte("guests: [{vmid: 100, colour: red}]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadSeed(bad); err == nil {
		t.Fatal("unknown seed key accepted")
	}
	// A seed with a taken vmid fails New.
	if _, err := New(Options{Seed: &Seed{Guests: []GuestSpec{{VMID: 100}, {VMID: 100}}}}); err == nil {
		t.Fatal("duplicate vmid accepted")
	}
}

// TestConfigFileLock: operations on one guest are serialized by its
// config file lock; a waiting stop can overrule a running shutdown.
func TestConfigFileLock(t *testing.T) {
	srv := startSim(t, Options{LockTimeout: 300 * time.Millisecond})
	c := tokenClient(t, srv)
	if err := srv.CreateGuest(GuestSpec{VMID: 100, Status: "running"}); err != nil {
		t.Fatal(err)
	}
	if err := srv.SetGuestIgnoresShutdown(100, true); err != nil {
		t.Fatal(err)
	}
	shutdown := c.ok("POST", "/nodes/pve1/qemu/100/status/shutdown", map[string]any{"timeout": 30}).str()
	waitFlock(t, srv.Sim, "qemu", 100)
	if exit := c.task("POST", "/nodes/pve1/qemu/100/status/stop", nil); exit != "can't lock file '/var/lock/qemu-server/lock-100.conf' - got timeout" {
		t.Fatalf("stop during shutdown: %q", exit)
	}
	if exit := c.task("POST", "/nodes/pve1/qemu/100/status/stop", map[string]any{"overrule-shutdown": 1}); exit != "OK" {
		t.Fatalf("stop overruling the shutdown: %q", exit)
	}
	if exit := c.wait(shutdown); exit != "received interrupt" {
		t.Fatalf("overruled shutdown: %q", exit)
	}
	if g, _ := srv.Guest(100); g.Status != "stopped" {
		t.Fatalf("status %s", g.Status)
	}
}

// TestConfigBackgroundDelay: POST config with background_delay answers
// null when the task is done in time, its error when it failed.
func TestConfigBackgroundDelay(t *testing.T) {
	srv := startSim(t, Options{})
	c := tokenClient(t, srv)
	if err := srv.CreateGuest(GuestSpec{VMID: 100}); err != nil {
		t.Fatal(err)
	}
	if r := c.ok("POST", "/nodes/pve1/qemu/100/config", map[string]any{"cores": 3, "background_delay": 5}); r.data() != nil {
		t.Fatalf("answer %v, want null", r.data())
	}
	if g, _ := srv.Guest(100); g.Config["cores"] != "3" {
		t.Fatalf("cores %q", g.Config["cores"])
	}
	_ = srv.SetConfig(100, "lock", "backup")
	r := c.do("POST", "/nodes/pve1/qemu/100/config", map[string]any{"cores": 4, "background_delay": 5})
	if r.Code != 500 || r.Reason != "failed to update VM 100: VM is locked (backup)" {
		t.Fatalf("locked: %d %q", r.Code, r.Reason)
	}
	if upid := c.ok("POST", "/nodes/pve1/qemu/100/config", map[string]any{"cores": 4}).str(); !strings.Contains(upid, ":qmconfig:100:") {
		t.Fatalf("without background_delay: %q", upid)
	}
}

// waitFlock waits until a task holds the guest's config file lock.
func waitFlock(t *testing.T, s *Sim, kind string, vmid int) {
	t.Helper()
	testenv.Eventually(t, 5*time.Second, func() error {
		s.mu.Lock()
		defer s.mu.Unlock()
		if ch := s.flocks[fmt.Sprintf("%s/%d", kind, vmid)]; ch == nil || len(ch) == 0 {
			return fmt.Errorf("config file lock of %s %d not taken", kind, vmid)
		}
		return nil
	})
}
