package docker

import (
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moby/moby/api/types/network"

	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/internal/manager"
	"github.com/subbus/subbus/internal/testenv"
)

// managed returns a manager over a connected driver (watching Docker's
// event feed), closed at the end of the test.
func managed(t *testing.T) (*manager.Manager, *Driver) {
	t.Helper()
	requireDocker(t)
	d := New(Options{HostID: "test-host"})
	m := manager.New(d, manager.Options{Host: "test-host"})
	if err := m.Connect(testCtx(t, 30*time.Second)); err != nil {
		t.Fatalf("Connect: %v", err)
	}
	t.Cleanup(func() { _ = m.Close() })
	return m, d
}

// subnetNetwork creates an internal network with a subnet of its own
// (10.x.y.0/24, free on this host), removed at the end of the test.
func subnetNetwork(t *testing.T, tag string) (string, netip.Prefix) {
	t.Helper()
	name := uniqueName(tag)
	for i := 0; i < 20; i++ {
		b := make([]byte, 2)
		_, _ = randRead(b)
		s := netip.MustParsePrefix(fmt.Sprintf("10.%d.%d.0/24", 100+int(b[0])%100, b[1]))
		if exec.Command("docker", "network", "create", "--internal", "--label", "io.subbus.test=true", "--subnet", s.String(), name).Run() == nil {
			t.Cleanup(func() { _ = exec.Command("docker", "network", "rm", name).Run() })
			return name, s
		}
	}
	t.Fatal("could not create an internal network with a free subnet")
	return "", netip.Prefix{}
}

// host returns address n of a /24.
func host(p netip.Prefix, n byte) string {
	a := p.Addr().As4()
	a[3] = n
	return netip.AddrFrom4(a).String()
}

// onNetwork returns the network entry of instance i named net.
func onNetwork(i drivers.Instance, net string) (drivers.NetworkConfig, bool) {
	k := slices.IndexFunc(i.Networks, func(n drivers.NetworkConfig) bool { return n.NetworkName == net })
	if k < 0 {
		return drivers.NetworkConfig{}, false
	}
	return i.Networks[k], true
}

// TestAttachAddressChecked: an address outside the network's subnet is
// invalid_argument at attach and at create, on a stopped and on a running
// container, and leaves nothing behind: no network entry (Get and docker
// inspect), a valid attach afterwards connects (changed=true) with its
// address, a second one is changed=false, another address is conflict,
// and detach of a network never attached is not_found.
func TestAttachAddressChecked(t *testing.T) {
	m, d := managed(t)
	net, subnet := subnetNetwork(t, "ipnet")
	other := sharedNetwork(t)
	for _, running := range []bool{false, true} {
		t.Run(map[bool]string{false: "stopped", true: "running"}[running], func(t *testing.T) {
			ctx := testCtx(t, 90*time.Second)
			name := uniqueName("ip")
			createT(t, d, busybox(t, name, "trap 'exit 0' TERM; while :; do sleep 1 & wait $!; done"))
			if running {
				if _, err := m.Start(ctx, name); err != nil {
					t.Fatal(err)
				}
			}
			for _, bad := range []string{"10.9.9.9", "fd00::5"} {
				_, err := m.AttachNetwork(ctx, name, drivers.NetworkConfig{NetworkName: net, IPAddress: bad})
				if !hasCode(err, drivers.InvalidArgument) {
					t.Errorf("attach %s=%s: %v (code %s), want invalid_argument", net, bad, err, drivers.CodeOf(err))
				}
			}
			i, err := m.Get(ctx, name)
			if err != nil {
				t.Fatal(err)
			}
			if _, ok := onNetwork(i, net); ok {
				t.Errorf("a refused attach left %s in Get: %+v", net, i.Networks)
			}
			if got := dockerCLI(t, "inspect", "-f", "{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}", name); strings.Contains(got, net) {
				t.Errorf("a refused attach left %s in the container: %s", net, got)
			}
			ip := host(subnet, 42)
			changed, err := m.AttachNetwork(ctx, name, drivers.NetworkConfig{NetworkName: net, IPAddress: ip})
			if err != nil || !changed {
				t.Fatalf("attach %s=%s: changed=%v %v, want changed", net, ip, changed, err)
			}
			if !running {
				if _, err := m.Start(ctx, name); err != nil {
					t.Fatalf("start after attach: %v", err)
				}
			}
			testenv.Eventually(t, 20*time.Second, func() error {
				got := dockerCLI(t, "inspect", "-f", fmt.Sprintf(`{{(index .NetworkSettings.Networks %q).IPAddress}}`, net), name)
				if got != ip {
					return fmt.Errorf("container address on %s is %q, want %s", net, got, ip)
				}
				return nil
			})
			i, err = m.Get(ctx, name)
			if err != nil {
				t.Fatal(err)
			}
			if n, ok := onNetwork(i, net); !ok || n.IPAddress != ip {
				t.Errorf("Get networks %+v, want %s with %s", i.Networks, net, ip)
			}
			changed, err = m.AttachNetwork(ctx, name, drivers.NetworkConfig{NetworkName: net, IPAddress: ip})
			if err != nil || changed {
				t.Errorf("attach again with the same address: changed=%v %v, want changed=false", changed, err)
			}
			changed, err = m.AttachNetwork(ctx, name, drivers.NetworkConfig{NetworkName: net})
			if err != nil || changed {
				t.Errorf("attach again without an address: changed=%v %v, want changed=false", changed, err)
			}
			_, err = m.AttachNetwork(ctx, name, drivers.NetworkConfig{NetworkName: net, IPAddress: host(subnet, 43)})
			if !hasCode(err, drivers.Conflict) {
				t.Errorf("attach with another address: %v, want conflict", err)
			}
			if err := m.DetachNetwork(ctx, name, other); !hasCode(err, drivers.NotFound) {
				t.Errorf("detach of a network never attached: %v, want not_found", err)
			}
			if err := m.DetachNetwork(ctx, name, net); err != nil {
				t.Fatal(err)
			}
			if err := m.DetachNetwork(ctx, name, net); !hasCode(err, drivers.NotFound) {
				t.Errorf("second detach: %v, want not_found", err)
			}
		})
	}
	t.Run("create", func(t *testing.T) {
		ctx := testCtx(t, 60*time.Second)
		for _, c := range []struct {
			net, ip string
			want    drivers.Code
		}{
			{net, "10.9.9.9", drivers.InvalidArgument},
			{uniqueName("nonet"), "", drivers.NotFound},
		} {
			name := uniqueName("ipc")
			t.Cleanup(func() { forceRemove(name) })
			tmpl := busybox(t, name, "sleep 60")
			tmpl.Networks = append(tmpl.Networks, drivers.NetworkConfig{NetworkName: c.net, IPAddress: c.ip})
			if _, err := m.Create(ctx, tmpl); !hasCode(err, c.want) {
				t.Errorf("create on %s=%s: %v, want %v", c.net, c.ip, err, c.want)
			}
			if out := dockerCLI(t, "ps", "-a", "-q", "--filter", "name=^/"+name+"$"); out != "" {
				t.Errorf("a refused create left container %s", out)
			}
		}
	})
}

// hasCode reports whether err is an error of code c.
func hasCode(err error, c drivers.Code) bool { return err != nil && drivers.CodeOf(err) == c }

// TestRestoreAndCloneCarryCurrentConfig: after limits set (memory 96 MiB,
// pids 80) and a network attach with a static address, snapshot restore
// and clone come back with those limits and networks (the clone without
// the static address, which two containers cannot share), and with the
// creation-time environment, labels and command. The restore's temporary
// name appears in no event.
func TestRestoreAndCloneCarryCurrentConfig(t *testing.T) {
	m, d := managed(t)
	net2, subnet := subnetNetwork(t, "net2")
	// The driver's own feed (the manager would drop the native echoes of
	// its operations, and the sync point below with them).
	var mu sync.Mutex
	var evs []drivers.Event
	wctx, stop := context.WithCancel(context.Background())
	watched := make(chan error, 1)
	go func() {
		watched <- d.Watch(wctx, func(ev drivers.Event) {
			mu.Lock()
			evs = append(evs, ev)
			mu.Unlock()
		})
	}()
	t.Cleanup(func() {
		stop()
		if err := <-watched; err != nil {
			t.Errorf("Watch: %v", err)
		}
	})
	ctx := testCtx(t, 3*time.Minute)
	name := uniqueName("carry")
	tmpl := busybox(t, name, "trap 'exit 0' TERM; while :; do sleep 1 & wait $!; done")
	tmpl.Resources = drivers.ResourceLimits{MemoryMB: 64}
	tmpl.Environment["GREETING"] = "hello"
	tmpl.Metadata = map[string]string{"team": "demo"}
	createT(t, d, tmpl)
	if _, err := m.SetLimits(ctx, name, drivers.ResourceLimits{MemoryMB: 96, PIDs: 80}); err != nil {
		t.Fatal(err)
	}
	ip := host(subnet, 10)
	if _, err := m.AttachNetwork(ctx, name, drivers.NetworkConfig{NetworkName: net2, IPAddress: ip}); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Start(ctx, name); err != nil {
		t.Fatal(err)
	}
	if _, err := m.CreateSnapshot(ctx, name, "s2"); err != nil {
		t.Fatal(err)
	}
	oldID := dockerCLI(t, "inspect", "-f", "{{.Id}}", name)
	if err := m.RestoreSnapshot(ctx, name, "s2"); err != nil {
		t.Fatal(err)
	}
	check := func(t *testing.T, name, wantIP string) {
		t.Helper()
		i, err := m.Get(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		if i.Limits.MemoryMB != 96 || i.Limits.PIDs != 80 {
			t.Errorf("%s limits %+v, want memory 96 and pids 80", name, i.Limits)
		}
		if n, ok := onNetwork(i, net2); !ok || n.IPAddress != wantIP && wantIP != "" {
			t.Errorf("%s networks %+v, want %s with %q", name, i.Networks, net2, wantIP)
		}
		if _, ok := onNetwork(i, homeNetwork(t)); !ok {
			t.Errorf("%s networks %+v lack the creation network", name, i.Networks)
		}
		if i.Metadata["team"] != "demo" || i.Image != TestImage || !i.Managed {
			t.Errorf("%s: %+v", name, i)
		}
		got := dockerCLI(t, "inspect", "-f",
			`{{.HostConfig.Memory}} {{.HostConfig.PidsLimit}} {{json .Config.Cmd}} {{index .Config.Labels "io.subbus.meta.team"}} {{range .Config.Env}}{{.}};{{end}}`, name)
		wantPrefix := fmt.Sprintf(`%d 80 ["sh","-c","trap 'exit 0' TERM; while :; do sleep 1 & wait $!; done"] demo `, 96<<20)
		if !strings.HasPrefix(got, wantPrefix) || !strings.Contains(got, "GREETING=hello;") || !strings.Contains(got, "SUBBUS_CONFORMANCE=1;") {
			t.Errorf("%s docker inspect: %q, want prefix %q and the environment", name, got, wantPrefix)
		}
		if wantIP != "" {
			static := dockerCLI(t, "inspect", "-f", fmt.Sprintf(`{{(index .NetworkSettings.Networks %q).IPAMConfig.IPv4Address}}`, net2), name)
			if static != wantIP {
				t.Errorf("%s static address on %s: %q, want %s", name, net2, static, wantIP)
			}
		}
	}
	t.Run("restore", func(t *testing.T) {
		i := waitRunning(t, m, name)
		if i.ID == oldID {
			t.Fatalf("the container was not recreated")
		}
		check(t, name, ip)
		testenv.Eventually(t, 20*time.Second, func() error {
			got := dockerCLI(t, "inspect", "-f", fmt.Sprintf(`{{(index .NetworkSettings.Networks %q).IPAddress}}`, net2), name)
			if got != ip {
				return fmt.Errorf("running address on %s: %q, want %s", net2, got, ip)
			}
			return nil
		})
		// The feed has reached the new container's start, which comes
		// after the old one's removal: by now every event of the restore
		// was seen.
		newID := shortID(i.ID)
		testenv.Eventually(t, 20*time.Second, func() error {
			mu.Lock()
			defer mu.Unlock()
			for _, ev := range evs {
				if ev.Type == drivers.EventStarted && ev.Details["id"] == newID {
					return nil
				}
			}
			return fmt.Errorf("no native started event of the restored container %s yet", newID)
		})
		mu.Lock()
		defer mu.Unlock()
		for _, ev := range evs {
			if strings.Contains(ev.Instance, "-subbus-restore-") || strings.Contains(ev.Details["old_name"], "-subbus-restore-") {
				t.Errorf("event names the restore's temporary container: %+v", ev)
			}
		}
	})
	t.Run("clone", func(t *testing.T) {
		dst := uniqueName("carryc")
		t.Cleanup(func() { forceRemove(dst) })
		if _, err := m.Clone(ctx, name, dst); err != nil {
			t.Fatal(err)
		}
		check(t, dst, "")
		i, _ := m.Get(ctx, dst)
		if n, _ := onNetwork(i, net2); n.IPAddress != "" {
			t.Errorf("the clone took the source's static address: %+v", i.Networks)
		}
		if _, err := m.Start(ctx, dst); err != nil {
			t.Fatalf("start the clone beside its running source: %v", err)
		}
		waitRunning(t, m, dst)
	})
}

func waitRunning(t *testing.T, m *manager.Manager, name string) drivers.Instance {
	t.Helper()
	var i drivers.Instance
	testenv.Eventually(t, 20*time.Second, func() error {
		var err error
		i, err = m.Get(context.Background(), name)
		if err != nil {
			return err
		}
		if i.State != drivers.StateRunning {
			return fmt.Errorf("%s is %s", name, i.State)
		}
		return nil
	})
	return i
}

// images lists image IDs (docker images -q with args), as a set.
func images(t *testing.T, args ...string) map[string]bool {
	t.Helper()
	out := dockerCLI(t, append([]string{"images", "-q", "--no-trunc"}, args...)...)
	set := map[string]bool{}
	for _, id := range strings.Fields(out) {
		set[id] = true
	}
	return set
}

// TestSnapshotImagesLeaveNothing: no snapshot operation (create, restore,
// restore again, delete after a restore) leaves an untagged image of the
// test's instance; deleting the instance deletes its snapshot images and
// every image restore made; snapshot list and delete then both answer
// not_found.
func TestSnapshotImagesLeaveNothing(t *testing.T) {
	m, d := managed(t)
	ctx := testCtx(t, 3*time.Minute)
	name := uniqueName("imgs")
	createT(t, d, busybox(t, name, "trap 'exit 0' TERM; while :; do sleep 1 & wait $!; done"))
	if _, err := m.Start(ctx, name); err != nil {
		t.Fatal(err)
	}
	ours := "label=" + LabelSnapInstance + "=" + name
	dangling := func(step string) {
		t.Helper()
		if d := images(t, "-a", "-f", "dangling=true", "-f", ours); len(d) > 0 {
			t.Errorf("after %s: untagged images of %s: %v", step, name, d)
		}
		if d := images(t, "-f", "dangling=true", "-f", ours); len(d) > 0 {
			t.Errorf("after %s: docker images -f dangling=true shows %v", step, d)
		}
	}
	sh := func(script string) {
		t.Helper()
		var out, errb strings.Builder
		if res, err := m.Exec(ctx, name, drivers.ExecRequest{Command: []string{"sh", "-c", script}}, &out, &errb); err != nil || res.ExitCode != 0 {
			t.Fatalf("exec %q: %v %s", script, err, errb.String())
		}
	}
	steps := []struct {
		what string
		do   func() error
	}{
		{"snapshot create s1", func() error { _, err := m.CreateSnapshot(ctx, name, "s1"); return err }},
		{"restore s1", func() error { return m.RestoreSnapshot(ctx, name, "s1") }},
		{"snapshot create s2 of the restored container", func() error {
			sh("echo two > /root/state")
			_, err := m.CreateSnapshot(ctx, name, "s2")
			return err
		}},
		{"restore s2", func() error { return m.RestoreSnapshot(ctx, name, "s2") }},
		{"delete s1 (parent of s2)", func() error { return m.DeleteSnapshot(ctx, name, "s1") }},
		{"restore s2 again", func() error { return m.RestoreSnapshot(ctx, name, "s2") }},
		{"delete s2 (the running container's image)", func() error { return m.DeleteSnapshot(ctx, name, "s2") }},
		{"snapshot create s3", func() error { _, err := m.CreateSnapshot(ctx, name, "s3"); return err }},
	}
	for _, s := range steps {
		if err := s.do(); err != nil {
			t.Fatalf("%s: %v", s.what, err)
		}
		dangling(s.what)
	}
	list, err := m.ListSnapshots(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || list[0].Name != "s3" {
		t.Errorf("snapshots %+v, want only s3", list)
	}
	if _, err := m.Delete(ctx, name, drivers.DeleteOptions{Force: true}); err != nil {
		t.Fatal(err)
	}
	if left := images(t, "-a", "-f", ours); len(left) > 0 {
		t.Errorf("images of %s left after it was deleted: %v", name, left)
	}
	for _, repo := range []string{repoName(SnapshotRepo, name), repoName(RestoreRepo, name)} {
		if left := images(t, repo); len(left) > 0 {
			t.Errorf("%s left after the instance was deleted: %v", repo, left)
		}
	}
	_, err = m.ListSnapshots(ctx, name)
	if !hasCode(err, drivers.NotFound) {
		t.Errorf("snapshot list after delete: %v, want not_found", err)
	}
	if err := m.DeleteSnapshot(ctx, name, "s3"); !hasCode(err, drivers.NotFound) {
		t.Errorf("snapshot delete after delete: %v, want not_found", err)
	}
}

func TestIsRestoreAside(t *testing.T) {
	cases := []struct {
		name string
		want bool
	}{
		{restoreAside("web"), true},
		{"web-subbus-restore-0a1b2c3d", true},
		{"web", false},
		{"web-subbus-restore-", false},
		{"web-subbus-restore-0a1b2c3", false},
		{"web-subbus-restore-0a1b2c3x", false},
		{"-subbus-restore-0a1b2c3d", false},
	}
	for _, c := range cases {
		if got := isRestoreAside(c.name); got != c.want {
			t.Errorf("isRestoreAside(%q) = %v, want %v", c.name, got, c.want)
		}
	}
}

// TestCurrentNetworks: the networks a container is on now, with the
// static addresses asked for (not the daemon's choice), creation
// networks first with their gateway and DNS, then attached ones by name;
// networks left since are dropped.
func TestCurrentNetworks(t *testing.T) {
	static := func(a string) *network.EndpointSettings {
		return &network.EndpointSettings{IPAMConfig: &network.EndpointIPAMConfig{IPv4Address: netip.MustParseAddr(a)},
			IPAddress: netip.MustParseAddr(a)}
	}
	dynamic := &network.EndpointSettings{IPAddress: netip.MustParseAddr("172.18.0.5")}
	created := []drivers.NetworkConfig{
		{NetworkName: "home", IPAddress: "10.0.0.2", DNSServers: []string{"10.0.0.53"}},
		{NetworkName: "gone"},
	}
	eps := map[string]*network.EndpointSettings{"home": dynamic, "zeta": static("10.1.0.9"), "alpha": nil}
	got := currentNetworks(created, eps)
	want := []drivers.NetworkConfig{
		{NetworkName: "home", DNSServers: []string{"10.0.0.53"}},
		{NetworkName: "alpha"},
		{NetworkName: "zeta", IPAddress: "10.1.0.9"},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("currentNetworks = %+v, want %+v", got, want)
	}
}

// TestHealthReportsOrphanSnapshots: the snapshots of a container removed
// outside subbus (docker rm) stay, and health names each of them.
func TestHealthReportsOrphanSnapshots(t *testing.T) {
	d := connected(t)
	ctx := testCtx(t, 60*time.Second)
	name := uniqueName("orphan")
	createT(t, d, busybox(t, name, "sleep 60"))
	if _, err := d.CreateSnapshot(ctx, name, "s1"); err != nil {
		t.Fatal(err)
	}
	ref := SnapshotImage(name, "s1")
	mentions := func(h drivers.Health) bool {
		return slices.ContainsFunc(h.Issues, func(s string) bool { return strings.Contains(s, ref) })
	}
	h, err := d.Health(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if mentions(h) {
		t.Errorf("health reports the snapshot of a live instance: %q", h.Issues)
	}
	dockerCLI(t, "rm", "-f", name)
	if h, err = d.Health(ctx); err != nil {
		t.Fatal(err)
	}
	if !mentions(h) {
		t.Errorf("health issues %q do not name %s, whose instance was removed by hand", h.Issues, ref)
	}
}
