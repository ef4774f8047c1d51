package process

import (
	"bytes"
	"errors"
	"os"
	"os/user"
	"strings"
	"testing"
	"time"

	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/internal/testenv"
)

// TestRootRule: a root worker runs instances and exec commands as
// process.default_user ("nobody" by default) when the request names no
// user, and refuses root (by name, by uid, or as default_user) unless
// process.allow_root. A refused create leaves nothing behind.
func TestRootRule(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the root rule applies to a worker running as root; run the tests as root")
	}
	nobody, err := user.Lookup("nobody")
	if err != nil {
		t.Skip("no user nobody on this machine")
	}
	idTemplate := func(name, as string) drivers.InstanceTemplate {
		return drivers.InstanceTemplate{Name: name, BaseImage: "sh", User: as,
			Command: []string{"sh", "-c", "id -u; exec sleep 60"}}
	}
	tests := []struct {
		name     string
		opts     func(*Options)
		as       string // template user
		execAs   string // exec user ("" = the instance's)
		wantUID  string // "" = create refused with permission_denied
		wantExec string // exec's id -u; "" = refused with permission_denied
	}{
		{name: "default runs as nobody", as: "", wantUID: nobody.Uid, wantExec: nobody.Uid},
		{name: "root by name refused", as: "root"},
		{name: "a uid without passwd entry", as: "54321", wantUID: "54321", wantExec: "54321"},
		{name: "root by uid refused", as: "0"},
		{name: "exec as root refused", as: "", execAs: "root", wantUID: nobody.Uid},
		{name: "exec as uid 0 refused", as: "", execAs: "0", wantUID: nobody.Uid},
		{name: "default_user root refused", opts: func(o *Options) { o.DefaultUser = "root" }, as: ""},
		{name: "allow_root lets root run", opts: func(o *Options) { o.AllowRoot = true }, as: "root", wantUID: "0", wantExec: "0"},
		{name: "allow_root keeps nobody the default", opts: func(o *Options) { o.AllowRoot = true }, as: "", wantUID: nobody.Uid, execAs: "root", wantExec: "0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := Options{StateDir: t.TempDir(), Cgroups: "off", PollInterval: testOptions("").PollInterval}
			if tt.opts != nil {
				tt.opts(&o)
			}
			m, d := newManager(t, o)
			_, err := m.Create(tctx(t), idTemplate("r1", tt.as))
			if tt.wantUID == "" {
				if !errors.Is(err, drivers.ErrPermissionDenied) || !strings.Contains(err.Error(), "allow_root") {
					t.Fatalf("create as %q: %v, want permission_denied naming allow_root", tt.as, err)
				}
				if list, _ := d.List(tctx(t)); len(list) != 0 {
					t.Fatalf("a refused create left %v", list)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _, _ = d.Delete(tctx(t), "r1", drivers.DeleteOptions{Force: true}) })
			if _, err := m.Start(tctx(t), "r1"); err != nil {
				t.Fatal(err)
			}
			testenv.Eventually(t, settle, func() error {
				var lines []string
				err := m.Logs(tctx(t), "r1", drivers.LogOptions{Lines: 5}, func(l drivers.LogLine) error { lines = append(lines, l.Line); return nil })
				if err != nil {
					return err
				}
				if len(lines) == 0 || lines[0] != tt.wantUID {
					return errors.New("instance printed " + strings.Join(lines, ",") + ", want uid " + tt.wantUID)
				}
				return nil
			})
			var out bytes.Buffer
			_, err = d.Exec(tctx(t), "r1", drivers.ExecRequest{Command: []string{"id", "-u"}, User: tt.execAs}, &out, &out)
			if tt.wantExec == "" {
				if !errors.Is(err, drivers.ErrPermissionDenied) {
					t.Fatalf("exec as %q: %v (%s), want permission_denied", tt.execAs, err, out.String())
				}
				return
			}
			if err != nil || strings.TrimSpace(out.String()) != tt.wantExec {
				t.Fatalf("exec as %q: %v, printed %q, want %s", tt.execAs, err, out.String(), tt.wantExec)
			}
		})
	}
}

// TestLimitsAsAnotherUser: an instance with limits running as nobody
// starts inside its cgroup (the worker hands the cgroup to the user, or
// has the kernel place it there on cgroup v2).
func TestLimitsAsAnotherUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	o := testOptions(t.TempDir())
	o.DefaultUser, o.AllowRoot = "nobody", false
	o.setDefaults()
	if probeCgroups(o) == nil {
		t.Skip("no writable cgroups here")
	}
	m, d := newManager(t, o)
	tmpl := drivers.InstanceTemplate{Name: "lim", BaseImage: "sleep", Command: []string{"sleep", "60"},
		Resources: drivers.ResourceLimits{MemoryMB: 64}}
	if _, err := m.Create(tctx(t), tmpl); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = d.Delete(tctx(t), "lim", drivers.DeleteOptions{Force: true}) })
	if _, err := m.Start(tctx(t), "lim"); err != nil {
		t.Fatal(err)
	}
	pid, _ := pidOf(t, d, "lim")
	killGroupAtEnd(t, pid)
	d.mu.Lock()
	id := d.insts["lim"].rec.ID
	d.mu.Unlock()
	testenv.Eventually(t, 5*time.Second, func() error {
		for _, p := range d.cg.pids(id) {
			if p == pid {
				return nil
			}
		}
		return errors.New("the process is not in its cgroup")
	})
}
