package pvesim

import (
	"net/http"
	"net/url"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestUPIDFormat(t *testing.T) {
	start := time.Unix(0x65000000, 0)
	tests := []struct {
		node           string
		pid, pstart    int
		typ, id, user  string
		want           string
		decodesAsValid bool
	}{
		{"pve", 0x1234, 0xABCD, "qmstart", "100", "root@pam", "UPID:pve:00001234:0000ABCD:65000000:qmstart:100:root@pam:", true},
		{"pve1", 1, 0x123456789, "vzcreate", "101", "root@pam!ci", "UPID:pve1:00000001:123456789:65000000:vzcreate:101:root@pam!ci:", true},
		{"node-2", 7, 8, "aptupdate", "", "root@pam", "UPID:node-2:00000007:00000008:65000000:aptupdate::root@pam:", true},
	}
	for _, tt := range tests {
		got := UPID(tt.node, tt.pid, tt.pstart, start, tt.typ, tt.id, tt.user)
		if got != tt.want {
			t.Errorf("UPID = %q, want %q", got, tt.want)
		}
		if reUPID.MatchString(got) != tt.decodesAsValid {
			t.Errorf("UPID.pm decode of %q: %v", got, !tt.decodesAsValid)
		}
		// go-proxmox reads sp[7] (user); proxmoxer 2.x wants 9 fields.
		if n := len(strings.Split(got, ":")); n != 9 {
			t.Errorf("%q has %d colon-separated fields, want 9", got, n)
		}
	}

	// A served UPID has the same shape and names the task.
	srv := startSim(t, Options{})
	c := tokenClient(t, srv)
	upid := c.ok("POST", "/nodes/pve1/qemu", map[string]any{"vmid": 123}).str()
	if !reUPID.MatchString(upid) || !strings.Contains(upid, ":qmcreate:123:root@pam!test:") {
		t.Fatalf("served UPID %q", upid)
	}
}

// TestErrorEnvelope pins PVE's error answers: the message in the reason
// phrase and in the body's message, data null, errors for 400.
func TestErrorEnvelope(t *testing.T) {
	for _, schema := range []string{"builtin", "pve9"} {
		t.Run(schema, func(t *testing.T) {
			opts := Options{}
			if schema == "pve9" {
				opts.Schema = refSchema(t, "pve9")
			}
			srv := startSim(t, opts)
			c := tokenClient(t, srv)
			tests := []struct {
				name, method, path string
				params             map[string]any
				code               int
				reason             string
				errors             map[string]any
			}{
				{"missing VM", "GET", "/nodes/pve1/qemu/999/status/current", nil, 500,
					"Configuration file 'nodes/pve1/qemu-server/999.conf' does not exist", nil},
				{"missing CT", "GET", "/nodes/pve1/lxc/998/config", nil, 500,
					"Configuration file 'nodes/pve1/lxc/998.conf' does not exist", nil},
				{"unknown path", "GET", "/nodes/pve1/qemu/100/frobnicate", nil, 501,
					"Method 'GET /nodes/pve1/qemu/100/frobnicate' not implemented", nil},
				{"unknown method", "PATCH", "/version", nil, 501, "Method 'PATCH /version' not implemented", nil},
				{"unknown node", "GET", "/nodes/nope/status", nil, 500,
					"hostname lookup 'nope' failed - failed to get address info for: nope: Name or service not known", nil},
				{"python True", "POST", "/nodes/pve1/qemu/100/status/shutdown", map[string]any{"forceStop": "True"}, 400,
					"Parameter verification failed.", map[string]any{"forceStop": "type check ('boolean') failed - got 'True'"}},
				{"vmid minimum", "GET", "/cluster/nextid", map[string]any{"vmid": 99}, 400,
					"Parameter verification failed.", map[string]any{"vmid": "value must have a minimum value of 100"}},
				{"unknown parameter", "POST", "/nodes/pve1/qemu/100/status/start", map[string]any{"bogus": 1}, 400,
					"Parameter verification failed.", map[string]any{"bogus": "property is not defined in schema and the schema does not allow additional properties"}},
				{"enum", "GET", "/cluster/resources", map[string]any{"type": "badcall"}, 400,
					"Parameter verification failed.", map[string]any{"type": "value 'badcall' does not have a value in the enumeration 'vm, storage, node, sdn'"}},
				{"missing required", "POST", "/nodes/pve1/qemu/100/snapshot", nil, 400,
					"Parameter verification failed.", map[string]any{"snapname": "property is missing and it is not optional"}},
				{"nextid taken", "GET", "/cluster/nextid", map[string]any{"vmid": 100}, 400,
					"Parameter verification failed.", map[string]any{"vmid": "VM 100 already exists"}},
				{"no such task", "GET", "/nodes/pve1/tasks/UPID:pve1:00001234:0000ABCD:65000000:qmstart:100:root@pam:/status", nil, 400,
					"Parameter verification failed.", map[string]any{"upid": "no such task"}},
			}
			if err := srv.CreateGuest(GuestSpec{VMID: 100, Name: "existing"}); err != nil {
				t.Fatal(err)
			}
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					r := c.do(tt.method, tt.path, tt.params)
					if r.Code != tt.code || r.Reason != tt.reason {
						t.Fatalf("got %d %q, want %d %q (body %s)", r.Code, r.Reason, tt.code, tt.reason, r.Raw)
					}
					if d, ok := r.Body["data"]; !ok || d != nil {
						t.Errorf("data = %v (present %v), want null", d, ok)
					}
					if msg, _ := r.Body["message"].(string); firstLine(msg) != tt.reason {
						t.Errorf("body message %q, want %q", msg, tt.reason)
					}
					if tt.errors != nil || r.Body["errors"] != nil {
						if got, _ := r.Body["errors"].(map[string]any); !reflect.DeepEqual(got, tt.errors) {
							t.Errorf("errors = %v, want %v", got, tt.errors)
						}
					}
				})
			}
		})
	}
}

func TestEnvelopeAndHeaders(t *testing.T) {
	srv := startSim(t, Options{})
	c := tokenClient(t, srv)
	r := c.ok("GET", "/version", nil)
	want := map[string]any{"version": "9.1.3", "release": "9.1", "repoid": "e5010dce", "console": "html5"}
	if !reflect.DeepEqual(r.data(), want) {
		t.Fatalf("version = %v", r.data())
	}
	// nextid is a string on the wire (go-proxmox decodes it into a string).
	if id := c.ok("GET", "/cluster/nextid", nil).data(); id != "100" {
		t.Fatalf("nextid = %#v, want \"100\"", id)
	}
	req, _ := http.NewRequest("GET", srv.APIURL()+"/version", nil)
	req.Header.Set("Authorization", "PVEAPIToken="+testToken)
	res, err := insecure.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if ct := res.Header.Get("Content-Type"); ct != "application/json;charset=UTF-8" {
		t.Errorf("Content-Type %q", ct)
	}
	if sv := res.Header.Get("Server"); sv != "pve-api-daemon/3.0" {
		t.Errorf("Server %q", sv)
	}
	if res.ProtoMajor != 1 {
		t.Errorf("protocol %s, want HTTP/1.1 (reason phrases need it)", res.Proto)
	}
}

func TestAuth(t *testing.T) {
	srv := startSim(t, Options{Password: "s3cret", RestrictedTokens: []string{"root@pam!ro=r0"},
		AuthFailureDelay: 300 * time.Millisecond})
	anon := &client{t: t, base: srv.APIURL(), header: http.Header{}}

	t.Run("wrong password is 401 after the delay", func(t *testing.T) {
		start := time.Now()
		r := anon.do("POST", "/access/ticket", map[string]any{"username": "root@pam", "password": "nope"})
		if r.Code != 401 || r.Reason != "authentication failure" {
			t.Fatalf("got %d %q", r.Code, r.Reason)
		}
		if d := time.Since(start); d < 300*time.Millisecond {
			t.Errorf("401 after %v, want >= 300ms", d)
		}
	})
	t.Run("no credentials", func(t *testing.T) {
		if r := anon.do("GET", "/version", nil); r.Code != 401 || r.Reason != "No ticket" {
			t.Fatalf("got %d %q", r.Code, r.Reason)
		}
	})
	t.Run("wrong token secret", func(t *testing.T) {
		h := http.Header{}
		h.Set("Authorization", "PVEAPIToken=root@pam!test=wrong")
		c := &client{t: t, base: srv.APIURL(), header: h}
		if r := c.do("GET", "/version", nil); r.Code != 401 {
			t.Fatalf("got %d %q", r.Code, r.Reason)
		}
	})
	t.Run("ticket and CSRF", func(t *testing.T) {
		r := anon.ok("POST", "/access/ticket", map[string]any{"username": "root", "realm": "pam", "password": "s3cret"})
		d := r.data().(map[string]any)
		ticket, csrf := d["ticket"].(string), d["CSRFPreventionToken"].(string)
		if !strings.HasPrefix(ticket, "PVE:root@pam:") || d["username"] != "root@pam" || csrf == "" {
			t.Fatalf("ticket answer %v", d)
		}
		h := http.Header{}
		// Raw, as proxmoxer and go-proxmox send it ("+" and "/" included).
		h.Set("Cookie", "PVEAuthCookie="+ticket)
		c := &client{t: t, base: srv.APIURL(), header: h}
		c.ok("GET", "/nodes", nil)
		// A write without the CSRF token is refused, with it accepted.
		if r := c.do("POST", "/nodes/pve1/qemu", map[string]any{"vmid": 150}); r.Code != 401 ||
			r.Reason != "Permission denied - invalid csrf token" {
			t.Fatalf("write without CSRF: %d %q", r.Code, r.Reason)
		}
		c.header.Set("CSRFPreventionToken", csrf)
		upid := c.ok("POST", "/nodes/pve1/qemu", map[string]any{"vmid": 150}).str()
		if !strings.HasSuffix(upid, ":qmcreate:150:root@pam:") {
			t.Fatalf("upid %q", upid)
		}
		// The ticket as the password renews it.
		renew := anon.ok("POST", "/access/ticket", map[string]any{"username": "root@pam", "password": ticket}).data().(map[string]any)
		if !strings.HasPrefix(renew["ticket"].(string), "PVE:root@pam:") {
			t.Fatalf("renewal %v", renew)
		}
		// A forged ticket is refused.
		h2 := http.Header{}
		h2.Set("Cookie", "PVEAuthCookie="+url.QueryEscape(ticket[:len(ticket)-3]+"AAA"))
		if r := (&client{t: t, base: srv.APIURL(), header: h2}).do("GET", "/nodes", nil); r.Code != 401 {
			t.Fatalf("forged ticket: %d", r.Code)
		}
	})
	t.Run("token", func(t *testing.T) {
		tokenClient(t, srv).ok("GET", "/cluster/resources", nil)
	})
	t.Run("privilege-separated token is 403", func(t *testing.T) {
		h := http.Header{}
		h.Set("Authorization", "PVEAPIToken=root@pam!ro=r0")
		c := &client{t: t, base: srv.APIURL(), header: h}
		c.ok("GET", "/version", nil)
		r := c.do("POST", "/nodes/pve1/qemu/150/status/start", nil)
		if r.Code != 403 || r.Reason != "Permission check failed (/vms/150, VM.PowerMgmt)" {
			t.Fatalf("got %d %q", r.Code, r.Reason)
		}
	})
}

// TestBooleans: only 0/1 or JSON booleans, as JSONSchema.pm check_type.
func TestBooleans(t *testing.T) {
	srv := startSim(t, Options{})
	if err := srv.CreateGuest(GuestSpec{VMID: 100}); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		json  bool
		value any
		ok    bool
	}{
		{false, "1", true}, {false, "0", true}, {false, "True", false}, {false, "true", false},
		{false, "yes", false}, {false, "on", false}, {false, "2", false}, {false, "", false},
		{true, true, true}, {true, false, true}, {true, 1, true}, {true, 0, true}, {true, "1", true},
		{true, "true", false}, {true, 2, false}, {true, []any{1}, false},
	}
	for _, tt := range tests {
		c := tokenClient(t, srv)
		c.json = tt.json
		r := c.do("POST", "/nodes/pve1/qemu/100/status/stop", map[string]any{"skiplock": tt.value})
		if (r.Code == 200) != tt.ok {
			t.Errorf("json=%v skiplock=%#v: %d %q %s, want ok=%v", tt.json, tt.value, r.Code, r.Reason, r.Raw, tt.ok)
		}
		if !tt.ok && r.Code == 400 {
			if _, has := r.Body["errors"].(map[string]any)["skiplock"]; !has {
				t.Errorf("json=%v skiplock=%#v: errors %v lack skiplock", tt.json, tt.value, r.Body["errors"])
			}
		}
	}
}

// TestQueryOverBody: query parameters are merged over body parameters.
func TestQueryOverBody(t *testing.T) {
	srv := startSim(t, Options{})
	c := tokenClient(t, srv)
	c.base = srv.APIURL()
	c.mustTaskOK("POST", "/nodes/pve1/qemu", map[string]any{"vmid": 100, "name": "body"})
	c.base = srv.APIURL()
	r := c.ok("PUT", "/nodes/pve1/qemu/100/config?name=query", map[string]any{"name": "body2"})
	_ = r
	g, _ := srv.Guest(100)
	if g.Name != "query" {
		t.Fatalf("name %q, want the query's", g.Name)
	}
}
