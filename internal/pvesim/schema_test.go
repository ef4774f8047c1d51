package pvesim

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/subbus/subbus/internal/testenv"
)

// TestRouteTableMatchesSchema: every route the simulator implements
// exists in PVE 9's schema, and every parameter the builtin table
// accepts is one PVE 9 accepts, so that validating against the builtin
// table never lets through what real PVE refuses.
func TestRouteTableMatchesSchema(t *testing.T) {
	s9 := refSchema(t, "pve9")
	for _, r := range routes {
		n := s9.find(r.path)
		if n == nil || n.Info[r.method] == nil {
			t.Errorf("%s %s: not in PVE 9's schema", r.method, r.path)
			continue
		}
		props := n.Info[r.method].Parameters.Properties
		for k := range r.params {
			if propFor(props, strings.Replace(k, "[n]", "0", 1)) == nil {
				t.Errorf("%s %s: parameter %q is not in PVE 9's schema", r.method, r.path, k)
			}
		}
	}
	// And PVE 8 has every route too.
	s8 := refSchema(t, "pve8")
	for _, r := range routes {
		if !s8.Has(r.method, r.path) {
			t.Errorf("%s %s: not in PVE 8's schema", r.method, r.path)
		}
	}
}

// checker calls the API and checks every answer against the schema's
// typed `returns`.
type checker struct {
	*client
	schema *Schema
}

func (c checker) call(method, path string, params map[string]any) resp {
	c.t.Helper()
	r := c.ok(method, path, params)
	_, _, m, err := c.schema.Lookup(method, path)
	if err != nil {
		c.t.Fatalf("%s %s: %v", method, path, err)
	}
	data := r.data()
	if path == "/cluster/nextid" {
		// The one documented exception: a string on the wire, integer
		// in the schema.
		if _, ok := data.(string); !ok {
			c.t.Fatalf("nextid %#v is not a string", data)
		}
		return r
	}
	if err := CheckReturns(m, data); err != nil {
		c.t.Errorf("%s %s: %v\n%s", method, path, err, r.Raw)
	}
	return r
}

func (c checker) task(method, path string, params map[string]any) {
	c.t.Helper()
	upid := c.call(method, path, params).str()
	if exit := c.wait(upid); exit != "OK" && !strings.HasPrefix(exit, "WARNINGS") {
		c.t.Fatalf("%s %s: %q", method, path, exit)
	}
	c.call("GET", "/nodes/"+strings.Split(upid, ":")[1]+"/tasks/"+upid+"/status", nil)
	c.call("GET", "/nodes/"+strings.Split(upid, ":")[1]+"/tasks/"+upid+"/log", nil)
}

// TestSchemaFidelity drives a client session through every implemented
// endpoint with PVE 9's schema loaded: every request must pass PVE's
// validation and every answer must match the schema's returns.
func TestSchemaFidelity(t *testing.T) {
	for _, version := range []string{"pve9", "pve8"} {
		t.Run(version, func(t *testing.T) {
			schema := refSchema(t, version)
			srv := startSim(t, Options{Schema: schema, Nodes: []string{"pve1", "pve2"}})
			for _, asJSON := range []bool{true, false} {
				c := checker{tokenClient(t, srv), schema}
				c.json = asJSON
				base := 100
				if !asJSON {
					base = 200
				}
				vm := fmt.Sprintf("/nodes/pve1/qemu/%d", base)
				ct := fmt.Sprintf("/nodes/pve1/lxc/%d", base+1)
				for _, p := range []string{"/version", "/cluster/nextid", "/cluster/status", "/cluster/resources", "/nodes",
					"/nodes/pve1/status", "/nodes/pve1/storage", "/nodes/pve1/storage/local-lvm/status",
					"/nodes/pve1/storage/local/content", "/nodes/pve1/network", "/nodes/pve1/qemu", "/nodes/pve1/lxc"} {
					c.call("GET", p, nil)
				}
				c.call("GET", "/nodes/pve1/network", map[string]any{"type": "any_bridge"})
				c.task("POST", "/nodes/pve1/qemu", map[string]any{"vmid": base, "name": "fid", "memory": "512", "cores": 1,
					"net0": "virtio,bridge=vmbr0", "scsi0": "local-lvm:1", "agent": "enabled=1", "ostype": "l26", "tags": "x"})
				c.task("POST", "/nodes/pve1/lxc", map[string]any{"vmid": base + 1, "ostemplate": "local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst",
					"hostname": "fidct", "rootfs": "local-lvm:2", "net0": "name=eth0,bridge=vmbr0,ip=dhcp", "memory": 256, "unprivileged": 1})
				for _, g := range []string{vm, ct} {
					c.call("GET", g+"/config", nil)
					c.call("GET", g+"/status/current", nil)
					c.task("POST", g+"/status/start", nil)
					c.call("GET", g+"/status/current", nil)
					c.call("GET", g+"/rrddata", map[string]any{"timeframe": "hour"})
					c.task("POST", g+"/status/reboot", nil)
					c.task("POST", g+"/snapshot", map[string]any{"snapname": "s1", "description": "d"})
					c.call("GET", g+"/snapshot", nil)
					c.call("GET", g+"/snapshot/s1/config", nil)
					c.task("POST", g+"/snapshot/s1/rollback", nil)
					c.task("DELETE", g+"/snapshot/s1", nil)
					c.task("POST", g+"/status/start", nil)
				}
				c.call("GET", ct+"/interfaces", nil)
				c.call("GET", "/cluster/sdn/vnets", nil)
				c.call("PUT", vm+"/config", map[string]any{"cores": 2, "delete": "tags"})
				c.task("POST", vm+"/config", map[string]any{"memory": "1024", "description": "hello"})
				c.call("PUT", ct+"/config", map[string]any{"cores": 2})
				c.call("POST", vm+"/agent/ping", nil)
				pid := c.call("POST", vm+"/agent/exec", map[string]any{"command": []string{"echo", "hi"}}).data().(map[string]any)["pid"]
				c.call("GET", vm+"/agent/exec-status", map[string]any{"pid": pid})
				c.call("GET", vm+"/agent/get-osinfo", nil)
				c.call("GET", vm+"/agent/network-get-interfaces", nil)
				c.task("POST", vm+"/status/suspend", nil)
				c.task("POST", vm+"/status/resume", nil)
				c.task("POST", vm+"/status/reset", nil)
				c.task("POST", vm+"/status/shutdown", map[string]any{"timeout": 10, "forceStop": 1})
				c.task("POST", ct+"/status/shutdown", map[string]any{"timeout": 10})
				c.task("POST", vm+"/status/stop", map[string]any{"skiplock": 0})
				c.task("POST", vm+"/clone", map[string]any{"newid": base + 10, "name": "fidclone", "full": 1})
				c.task("POST", ct+"/clone", map[string]any{"newid": base + 11, "hostname": "fidctclone", "full": 1})
				c.task("POST", vm+"/template", nil)
				c.call("POST", ct+"/template", nil)
				c.call("GET", "/nodes/pve1/tasks", map[string]any{"limit": 5, "vmid": base})
				c.call("GET", "/cluster/tasks", nil)
				c.call("GET", "/cluster/resources", map[string]any{"type": "vm"})
				for _, g := range []string{vm, ct, fmt.Sprintf("/nodes/pve1/qemu/%d", base+10), fmt.Sprintf("/nodes/pve1/lxc/%d", base+11)} {
					c.task("DELETE", g, map[string]any{"purge": 1, "destroy-unreferenced-disks": 1})
				}
			}
			other := refSchema(t, map[string]string{"pve9": "pve8", "pve8": "pve9"}[version])
			for _, r := range srv.Requests() {
				if r.Status == 400 || r.Status == 501 {
					t.Errorf("request %s %s %v was refused: %d", r.Method, r.Path, r.Params, r.Status)
				}
				// The session is valid for the other PVE major version too.
				if err := other.ValidateRequest(r.Method, r.Path, r.Params); err != nil {
					t.Errorf("request %s %s %v: other schema: %v %v", r.Method, r.Path, r.Params, err, err.(*APIError).Errors)
				}
			}
		})
	}
}

// TestSchemaVersions: a parameter PVE 9 added is refused by PVE 8.
func TestSchemaVersions(t *testing.T) {
	params := map[string]any{"with-conntrack-state": "1"}
	if err := refSchema(t, "pve9").ValidateRequest("POST", "/nodes/pve/qemu/100/status/start", params); err != nil {
		t.Errorf("pve9: %v", err)
	}
	err := refSchema(t, "pve8").ValidateRequest("POST", "/nodes/pve/qemu/100/status/start", params)
	if ae, ok := err.(*APIError); !ok || ae.Errors["with-conntrack-state"] != "property is not defined in schema and the schema does not allow additional properties" {
		t.Errorf("pve8: %v", err)
	}
	for _, tt := range []struct {
		version string
		code    int
	}{{"pve9", 200}, {"pve8", 400}} {
		srv := startSim(t, Options{Schema: refSchema(t, tt.version)})
		if err := srv.CreateGuest(GuestSpec{VMID: 100}); err != nil {
			t.Fatal(err)
		}
		r := tokenClient(t, srv).do("POST", "/nodes/pve1/qemu/100/status/start", map[string]any{"with-conntrack-state": 1})
		if r.Code != tt.code {
			t.Errorf("%s: with-conntrack-state: %d %s, want %d", tt.version, r.Code, r.Raw, tt.code)
		}
	}
}

// TestPropertyStrings: property-string values (net[n], memory, agent)
// are parsed as JSONSchema.pm parse_property_string does.
func TestPropertyStrings(t *testing.T) {
	s9 := refSchema(t, "pve9")
	_, _, m, err := s9.Lookup("POST", "/nodes/pve1/qemu")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		key, value, err string
	}{
		{"net0", "virtio,bridge=vmbr0", ""},
		{"net0", "virtio=BC:24:11:00:00:01,bridge=vmbr0,firewall=1", ""},
		{"net0", "model=virtio,bridge=vmbr0", ""},
		{"net0", "virtio,bogus=1", "invalid format - invalid key in comma-separated list property: bogus\n"},
		{"net0", "virtio,bridge=vmbr0,bridge=vmbr1", "invalid format - duplicate key in comma-separated list property: bridge\n"},
		{"memory", "2048", ""},
		{"memory", "current=2048", ""},
		{"memory", "lots", "invalid format - format error\nmemory.current: type check ('integer') failed - got 'lots'\n"},
		{"agent", "1", ""},
		{"agent", "enabled=1,fstrim_cloned_disks=1", ""},
		{"agent", "True", "invalid format - format error\nagent.enabled: type check ('boolean') failed - got 'True'\n"},
		{"scsi0", "local-lvm:8,ssd=1,discard=on", ""},
		{"name", "web-1", ""},
		{"name", "web_1", "invalid format - value does not look like a valid DNS name\n"},
		{"cores", "0", "value must have a minimum value of 1"},
	}
	for _, tt := range tests {
		errs := ValidateParams(m, map[string]any{"node": "pve1", "vmid": "100", tt.key: tt.value})
		if errs[tt.key] != tt.err {
			t.Errorf("%s=%q: %q, want %q", tt.key, tt.value, errs[tt.key], tt.err)
		}
	}
}

// TestCrossCheckWithPython compares the Go validator with the
// independent checker pve_schema_check.py (next to the schema) on the
// rules both implement.
func TestCrossCheckWithPython(t *testing.T) {
	s9 := refSchema(t, "pve9")
	dir := filepath.Join(repoRoot(t), "..", "shared", "reference", "pve")
	script := filepath.Join(dir, "pve_schema_check.py")
	py, err := exec.LookPath("python3")
	if err == nil {
		_, err = os.Stat(script)
	}
	testenv.Require(t, "python3 and "+script, err, "apt-get install python3")
	// The script reads apidata.js: write the schema in that form.
	gz, err := os.ReadFile(filepath.Join(dir, "apischema-pve9.json.gz"))
	if err != nil {
		t.Fatal(err)
	}
	zr, err := gzip.NewReader(bytes.NewReader(gz))
	if err != nil {
		t.Fatal(err)
	}
	raw, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	js := filepath.Join(t.TempDir(), "apidata.js")
	if err := os.WriteFile(js, append(append([]byte("const apiSchema = "), raw...), ';', '\n'), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		Method string            `json:"method"`
		Path   string            `json:"path"`
		Params map[string]string `json:"params"`
	}{
		{"POST", "/nodes/pve/qemu/100/status/shutdown", map[string]string{"timeout": "30", "forceStop": "1"}},
		{"POST", "/nodes/pve/qemu/100/status/shutdown", map[string]string{"forceStop": "True"}},
		{"GET", "/cluster/nextid", map[string]string{"vmid": "99"}},
		{"GET", "/cluster/resources", map[string]string{"type": "badcall"}},
		{"POST", "/nodes/pve/qemu/100/snapshot", map[string]string{"snapname": "s1", "vmstate": "yes"}},
		{"POST", "/nodes/pve/qemu/100/status/start", map[string]string{"bogus": "1", "timeout": "x"}},
		{"POST", "/nodes/pve/qemu/100/snapshot", map[string]string{"description": "no name"}},
		{"GET", "/nodes/pve/tasks/UPID:pve:00001234:0000ABCD:65000000:qmstart:100:root@pam:/status", nil},
		{"GET", "/nodes/pve/qemu/100/frobnicate", nil},
	}
	// One Python process checks every request (loading the schema is slow).
	prog := `import json, sys
sys.path.insert(0, sys.argv[1])
import pve_schema_check as c
tree = c.load(sys.argv[2])
out = []
for r in json.load(sys.stdin):
    tpl, errs = c.check(tree, r["method"], r["path"], r["params"] or {})
    out.append({"template": tpl, "errors": errs})
json.dump(out, sys.stdout)
`
	type pyResult struct {
		Template *string           `json:"template"`
		Errors   map[string]string `json:"errors"`
	}
	in, _ := json.Marshal(tests)
	cmd := exec.Command(py, "-c", prog, dir, js)
	cmd.Stdin = strings.NewReader(string(in))
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("pve_schema_check.py: %v", err)
	}
	var results []pyResult
	if err := json.Unmarshal(out, &results); err != nil || len(results) != len(tests) {
		t.Fatalf("pve_schema_check.py answered %s: %v", out, err)
	}
	for i, tt := range tests {
		pyRes := results[i]
		tpl, binds, m, lerr := s9.Lookup(tt.Method, strings.TrimSuffix(tt.Path, "/"))
		if lerr != nil {
			if pyRes.Template != nil {
				t.Errorf("%s %s: Go says %v, Python resolved %s", tt.Method, tt.Path, lerr, *pyRes.Template)
			}
			if want := fmt.Sprintf("Method '%s %s' not implemented", tt.Method, tt.Path); pyRes.Errors["_"] != want || lerr.(*APIError).Message != want {
				t.Errorf("501 wording: Go %q, Python %q", lerr.(*APIError).Message, pyRes.Errors["_"])
			}
			continue
		}
		if pyRes.Template == nil || *pyRes.Template != tpl {
			t.Errorf("%s %s: Go template %s, Python %v", tt.Method, tt.Path, tpl, pyRes.Template)
			continue
		}
		params := map[string]any{}
		for k, v := range binds {
			params[k] = v
		}
		for k, v := range tt.Params {
			params[k] = v
		}
		goErrs := ValidateParams(m, params)
		if !reflect.DeepEqual(goErrs, pyRes.Errors) && !(len(goErrs) == 0 && len(pyRes.Errors) == 0) {
			t.Errorf("%s %s %v:\n Go     %v\n Python %v", tt.Method, tt.Path, tt.Params, goErrs, pyRes.Errors)
		}
	}
}
