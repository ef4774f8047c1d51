package lxc

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/internal/testenv"
)

// TestCreateFromTemplate: every template field lands where docs/lxc.md
// says, and the running container sees it.
func TestCreateFromTemplate(t *testing.T) {
	d := requireLXD(t)
	netName := testNetwork(t)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "hello"), []byte("from the host\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_ = os.Chmod(dir, 0o755)
	name := randName("sbt-tmpl")
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	t.Cleanup(func() { _, _ = d.Delete(context.Background(), name, drivers.DeleteOptions{Force: true}) })
	inst, err := d.Create(ctx, drivers.InstanceTemplate{
		Name:        name,
		BaseImage:   testImage,
		Resources:   drivers.ResourceLimits{CPUCores: 1, MemoryMB: 96, PIDs: 200},
		Environment: map[string]string{"COLOR": "blue"},
		Volumes:     []drivers.Volume{{Source: dir, Target: "/mnt/host", ReadOnly: true}},
		Networks:    []drivers.NetworkConfig{{NetworkName: netName}},
		Metadata:    map[string]string{"team": "infra"},
	})
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	want := drivers.ResourceLimits{CPUCores: 1, MemoryMB: 96, PIDs: 200}
	if inst.Limits != want || inst.Metadata["team"] != "infra" || !inst.Managed || inst.Image != testImage ||
		!slices.ContainsFunc(inst.Networks, func(n drivers.NetworkConfig) bool { return n.NetworkName == netName }) {
		t.Errorf("created %+v", inst)
	}
	if _, ok := inst.Metadata["subbus.managed"]; ok {
		t.Errorf("the managed marker leaks into metadata: %v", inst.Metadata)
	}
	if _, err := d.Start(ctx, name); err != nil {
		t.Fatalf("Start: %v", err)
	}
	var out, errb strings.Builder
	code, err := d.Exec(ctx, name, drivers.ExecRequest{Command: []string{"sh", "-c",
		`echo "$COLOR"; cat /mnt/host/hello; touch /mnt/host/x 2>/dev/null && echo writable; ls /sys/class/net`}}, &out, &errb)
	if err != nil || code != 0 {
		t.Fatalf("Exec: %d %v %s", code, err, errb.String())
	}
	got := out.String()
	if !strings.HasPrefix(got, "blue\nfrom the host\n") || strings.Contains(got, "writable") || !strings.Contains(got, "eth0") {
		t.Errorf("inside the container: %q (want the env, the read-only volume and eth0)", got)
	}

	_, err = d.Create(ctx, drivers.InstanceTemplate{Name: randName("sbt-tmpl"), BaseImage: testImage, Command: []string{"sleep", "1"}})
	if classify(err) != drivers.Unsupported {
		t.Errorf("create with a command: %v, want unsupported", err)
	}
	_, err = d.Create(ctx, drivers.InstanceTemplate{Name: randName("sbt-tmpl"), BaseImage: "no-such-image"})
	if classify(err) != drivers.NotFound || !strings.Contains(err.Error(), "no-such-image") {
		t.Errorf("create from a missing image: %v, want not_found naming it", err)
	}
}

// TestProject: with lxc.project every request, exec output and event is
// scoped to that project.
func TestProject(t *testing.T) {
	requireLXD(t)
	project := randName("sbtp")
	if out, err := exec.Command("lxc", "project", "create", project,
		"-c", "features.images=false", "-c", "features.profiles=false").CombinedOutput(); err != nil {
		t.Fatalf("lxc project create: %v %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("lxc", "project", "delete", project).Run() })
	o := DefaultOptions()
	o.Project = project
	d := New(o)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	if err := d.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	var evs events
	watch(t, d, &evs)
	name := randName("sbt-proj")
	t.Cleanup(func() { _, _ = d.Delete(context.Background(), name, drivers.DeleteOptions{Force: true}) })
	if _, err := d.Create(ctx, drivers.InstanceTemplate{Name: name, BaseImage: testImage}); err != nil {
		t.Fatalf("Create in project: %v", err)
	}
	if _, err := d.Start(ctx, name); err != nil {
		t.Fatalf("Start: %v", err)
	}
	out, err := exec.Command("lxc", "list", "--project", project, "-f", "csv", "-c", "n").Output()
	if err != nil || !strings.Contains(string(out), name) {
		t.Errorf("lxc list --project %s: %q %v", project, out, err)
	}
	out, _ = exec.Command("lxc", "list", "-f", "csv", "-c", "n").Output()
	if strings.Contains(string(out), name) {
		t.Errorf("%s is in the default project too", name)
	}
	var sb strings.Builder
	if code, err := d.Exec(ctx, name, drivers.ExecRequest{Command: []string{"hostname"}}, &sb, &sb); err != nil || code != 0 || sb.String() != name+"\n" {
		t.Errorf("Exec in project: %d %v %q", code, err, sb.String())
	}
	evs.wait(t, "started", func(ev drivers.Event) bool {
		return ev.Instance == name && ev.Type == drivers.EventStarted && ev.Details["project"] == project
	})
	testenv.Eventually(t, 20*time.Second, func() error {
		b, err := d.consoleLog(ctx, name)
		if err != nil {
			return err
		}
		if !strings.Contains(string(b), "subbus-conformance "+name) {
			return os.ErrNotExist
		}
		return nil
	})
}
