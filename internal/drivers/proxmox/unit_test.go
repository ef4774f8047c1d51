package proxmox

import (
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"

	gp "github.com/luthermonson/go-proxmox"

	"github.com/subbus/subbus/internal/config"
	"github.com/subbus/subbus/internal/drivers"
)

func TestOptions(t *testing.T) {
	cases := []struct {
		yaml    string
		wantKey string // "" = valid
	}{
		{"proxmox:\n  url: https://pve:8006\n  token_id: root@pam!x\n  token_secret: s\n", ""},
		{"proxmox:\n  retry_attempts: 2\n  breaker_failures: 3\n", ""},
		{"proxmox:\n  nope: 1\n", "nope"},
		{"proxmox:\n  url: ftp://x\n", "proxmox.url"},
		{"proxmox:\n  token_secret: s\n", "proxmox.token_id"},
		{"proxmox:\n  token_id: root@pam\n", "proxmox.token_id"},
		{"proxmox:\n  password: a\n  password_file: /b\n", "proxmox.password_file"},
		{"proxmox:\n  fingerprint: zz\n", "proxmox.fingerprint"},
		{"proxmox:\n  default_kind: kvm\n", "proxmox.default_kind"},
		{"proxmox:\n  disk_gb: 0\n", "proxmox.disk_gb"},
		{"proxmox:\n  task_poll_interval: 0s\n", "proxmox.task_poll_interval"},
		{"proxmox:\n  verify_ssl: maybe\n", "proxmox"},
	}
	for _, c := range cases {
		cfg, err := config.Parse([]byte(c.yaml))
		if err != nil {
			t.Fatal(err)
		}
		_, err = OptionsFromConfig(cfg)
		switch {
		case c.wantKey == "" && err != nil:
			t.Errorf("%q: %v", c.yaml, err)
		case c.wantKey != "" && (err == nil || !strings.Contains(err.Error(), c.wantKey)):
			t.Errorf("%q: error %v, want one naming %s", c.yaml, err, c.wantKey)
		}
	}
}

func TestInsecureOnlyWhenExplicit(t *testing.T) {
	f, tr := false, true
	for _, c := range []struct {
		verify *bool
		fp     string
		want   bool
	}{{nil, "", false}, {&tr, "", false}, {&f, "", true}, {&f, strings.Repeat("ab", 32), false}} {
		o := DefaultOptions()
		o.VerifySSL, o.Fingerprint = c.verify, c.fp
		var warned []string
		d := New(o)
		d.warnf = func(format string, args ...any) { warned = append(warned, fmt.Sprintf(format, args...)) }
		tc, err := d.tlsConfig()
		if err != nil {
			t.Fatal(err)
		}
		insecureNoPin := tc.InsecureSkipVerify && tc.VerifyPeerCertificate == nil
		if insecureNoPin != c.want || (len(warned) > 0) != c.want {
			t.Errorf("verify_ssl=%v fingerprint=%q: unverified=%v warnings=%q, want unverified=%v with a warning", c.verify, c.fp, insecureNoPin, warned, c.want)
		}
	}
}

func TestErrorCode(t *testing.T) {
	task := func(s string) error {
		return fmt.Errorf("proxmox: x: %w", &gp.TaskFailedError{UPID: "UPID:pve:1:2:3:qmstart:100:root@pam:", ExitStatus: s})
	}
	api := func(code int, msg string, errs map[string]string) error {
		return fmt.Errorf("wrapped: %w", &gp.APIError{StatusCode: code, Status: fmt.Sprintf("%d %s", code, msg), Message: msg, Errors: errs})
	}
	cases := []struct {
		err  error
		want drivers.Code
	}{
		{task("VM is locked (snapshot)"), drivers.Conflict},
		{task("CT is locked (backup)"), drivers.Conflict},
		{task("can't lock file '/var/lock/qemu-server/lock-100.conf' - got timeout"), drivers.Conflict},
		{task("VM 100 already running"), drivers.Conflict},
		{task("snapshot 'x' does not exist"), drivers.NotFound},
		{task("snapshot name 's1' already used"), drivers.AlreadyExists},
		{task("VM quit/powerdown failed - got timeout"), drivers.Timeout},
		{task("something odd"), drivers.Internal},
		{api(500, "Configuration file 'nodes/pve/qemu-server/999.conf' does not exist", nil), drivers.NotFound},
		{api(500, "VM 100 not running", nil), drivers.Conflict},
		{api(500, "QEMU guest agent is not running", nil), drivers.Conflict},
		{api(400, "Parameter verification failed.", map[string]string{"vmid": "VM 200 already exists"}), drivers.AlreadyExists},
		{api(400, "Parameter verification failed.", map[string]string{"memory": "type check ('integer') failed"}), drivers.InvalidArgument},
		{api(401, "authentication failure", nil), drivers.PermissionDenied},
		{api(403, "Permission check failed", nil), drivers.PermissionDenied},
		{api(501, "Method 'GET /x' not implemented", nil), drivers.Unsupported},
		{api(http.StatusBadGateway, "Bad Gateway", nil), drivers.Unavailable},
		{api(595, "Connection refused", nil), drivers.Unavailable},
		{&errNoGuest{name: "a"}, drivers.NotFound},
		{&errAmbiguous{name: "a", vmids: []int{100, 101}}, drivers.Conflict},
		{&errNameTaken{name: "a", vmid: 100}, drivers.AlreadyExists},
		{&certError{msg: "x"}, drivers.PermissionDenied},
		{gp.ErrTimeout, drivers.Timeout},
		{drivers.Unsupportedf("x"), drivers.Unsupported},
		{errors.New("?"), drivers.Internal},
	}
	for _, c := range cases {
		if got := classify(c.err); got != c.want {
			t.Errorf("classify(%v) = %s, want %s", c.err, got, c.want)
		}
	}
}

func TestMatch(t *testing.T) {
	list := []resource{
		{VMID: 100, Name: "web", Type: kindQemu}, {VMID: 101, Name: "db", Type: kindLXC},
		{VMID: 102, Name: "db", Type: kindQemu}, {VMID: 103, Type: kindQemu},
	}
	cases := []struct {
		name string
		vmid int
		err  drivers.Code
	}{
		{"web", 100, 0}, {"100", 100, 0}, {"101", 101, 0}, {"103", 103, 0},
		{"db", 0, drivers.Conflict}, {"nope", 0, drivers.NotFound}, {"999", 0, drivers.NotFound},
	}
	for _, c := range cases {
		r, err := match(list, c.name)
		if classify(err) != c.err || (err == nil && r.vmid() != c.vmid) {
			t.Errorf("match(%q) = %d, %v; want %d, %s", c.name, r.vmid(), err, c.vmid, c.err)
		}
	}
	_, err := match(list, "db")
	if !strings.Contains(err.Error(), "101, 102") {
		t.Errorf("ambiguous name error %q does not list the VMIDs", err)
	}
}

func TestMarkerRoundTrip(t *testing.T) {
	m := marker{Image: "local:iso/x.iso", Meta: map[string]string{"team": "a"}, CreateID: "abc"}
	desc := withMarker("hello\nworld", m)
	got, ok := parseMarker(desc)
	if !ok || got.Image != m.Image || got.Meta["team"] != "a" || got.CreateID != "abc" {
		t.Fatalf("parseMarker(%q) = %+v, %v", desc, got, ok)
	}
	if !strings.HasPrefix(desc, "hello\nworld\n") {
		t.Errorf("the user's description was not kept: %q", desc)
	}
	m.CreateID = "def"
	if again := withMarker(desc, m); strings.Count(again, markerPrefix) != 1 {
		t.Errorf("marker not replaced: %q", again)
	}
}

func TestExecCommand(t *testing.T) {
	cases := []struct {
		req  drivers.ExecRequest
		want []string
	}{
		{drivers.ExecRequest{Command: []string{"ls", "/"}}, []string{"ls", "/"}},
		{drivers.ExecRequest{Command: []string{"pwd"}, WorkDir: "/tmp"},
			[]string{"/bin/sh", "-c", `cd "$1" || exit 126; shift; exec env "$@"`, "sh", "/tmp", "pwd"}},
		{drivers.ExecRequest{Command: []string{"sh", "-c", "echo $A"}, Env: map[string]string{"B": "2", "A": "x y"}},
			[]string{"/bin/sh", "-c", `exec env "$@"`, "sh", "A=x y", "B=2", "sh", "-c", "echo $A"}},
	}
	for _, c := range cases {
		if got := execCommand(c.req); !slices.Equal(got, c.want) {
			t.Errorf("execCommand(%+v) = %q, want %q", c.req, got, c.want)
		}
	}
}

func TestNICValue(t *testing.T) {
	cases := []struct {
		kind string
		n    drivers.NetworkConfig
		want string
		code drivers.Code
	}{
		{kindQemu, drivers.NetworkConfig{NetworkName: "vmbr0"}, "virtio,bridge=vmbr0", 0},
		{kindQemu, drivers.NetworkConfig{NetworkName: "vmbr0", IPAddress: "10.0.0.2/24"}, "", drivers.Unsupported},
		{kindLXC, drivers.NetworkConfig{NetworkName: "vmbr1"}, "name=eth2,bridge=vmbr1,ip=dhcp", 0},
		{kindLXC, drivers.NetworkConfig{NetworkName: "vmbr1", IPAddress: "10.0.0.2/24", Gateway: "10.0.0.1"}, "name=eth2,bridge=vmbr1,ip=10.0.0.2/24,gw=10.0.0.1", 0},
		{kindLXC, drivers.NetworkConfig{NetworkName: "vmbr1", IPAddress: "10.0.0.2"}, "", drivers.InvalidArgument},
	}
	for _, c := range cases {
		got, err := nicValue(c.kind, 2, c.n)
		if got != c.want || drivers.CodeOf(err) != c.code {
			t.Errorf("nicValue(%s, %+v) = %q, %v; want %q, %s", c.kind, c.n, got, err, c.want, c.code)
		}
	}
}

// TestCheckNetwork: a bridge the node lacks is not_found, a container's
// address outside the bridge's subnet invalid_argument (PVE would accept
// both and fail at start).
func TestCheckNetwork(t *testing.T) {
	nets := []drivers.Network{{Name: "vmbr0", Subnet: "192.0.2.10/24"}, {Name: "vmbr1"}}
	cases := []struct {
		kind string
		n    drivers.NetworkConfig
		code drivers.Code
	}{
		{kindLXC, drivers.NetworkConfig{NetworkName: "vmbr0"}, 0},
		{kindLXC, drivers.NetworkConfig{NetworkName: "vmbr0", IPAddress: "192.0.2.50/24"}, 0},
		{kindLXC, drivers.NetworkConfig{NetworkName: "vmbr0", IPAddress: "10.9.9.9/24"}, drivers.InvalidArgument},
		{kindLXC, drivers.NetworkConfig{NetworkName: "vmbr1", IPAddress: "10.9.9.9/24"}, 0},  // no address on the bridge: PVE judges
		{kindQemu, drivers.NetworkConfig{NetworkName: "vmbr0", IPAddress: "10.9.9.9/24"}, 0}, // nicValue: unsupported
		{kindQemu, drivers.NetworkConfig{NetworkName: "vmbr9"}, drivers.NotFound},
		{kindLXC, drivers.NetworkConfig{NetworkName: "vmbr9"}, drivers.NotFound},
	}
	for _, c := range cases {
		err := checkNetwork(nets, c.kind, c.n, "pve1")
		if got := classify(err); err != nil && got != c.code || err == nil && c.code != 0 {
			t.Errorf("checkNetwork(%+v) = %v (%s), want %s", c.n, err, got, c.code)
		}
	}
}

func TestCheckTemplate(t *testing.T) {
	ok := drivers.InstanceTemplate{Name: "web", Metadata: map[string]string{"kind": "lxc", "team": "x"}}
	if err := checkTemplate(ok); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		mod  func(*drivers.InstanceTemplate)
		code drivers.Code
	}{
		{func(t *drivers.InstanceTemplate) { t.Name = "101" }, drivers.InvalidArgument},
		{func(t *drivers.InstanceTemplate) { t.Metadata = map[string]string{"kind": "kvm"} }, drivers.InvalidArgument},
		{func(t *drivers.InstanceTemplate) { t.Metadata = map[string]string{"vmid": "1"} }, drivers.InvalidArgument},
		{func(t *drivers.InstanceTemplate) { t.Resources.CPUCores = 1.5 }, drivers.InvalidArgument},
		{func(t *drivers.InstanceTemplate) { t.Command = []string{"x"} }, drivers.Unsupported},
		{func(t *drivers.InstanceTemplate) { t.Environment = map[string]string{"A": "1"} }, drivers.Unsupported},
		{func(t *drivers.InstanceTemplate) { t.Resources.PIDs = 10 }, drivers.Unsupported},
	}
	for i, c := range cases {
		tm := ok
		tm.Metadata = map[string]string{}
		c.mod(&tm)
		if got := drivers.CodeOf(checkTemplate(tm)); got != c.code {
			t.Errorf("case %d: code %s, want %s", i, got, c.code)
		}
	}
}

// TestClusterWide: a PVE cluster's guests are shared by every worker
// configured with it (drivers.ClusterWide), so its workers keep the pooled
// subject and take leases.
func TestClusterWide(t *testing.T) {
	var d drivers.Driver = New(DefaultOptions())
	if cw, ok := d.(drivers.ClusterWide); !ok || !cw.ClusterWide() {
		t.Fatal("the proxmox driver is not cluster-wide")
	}
}
