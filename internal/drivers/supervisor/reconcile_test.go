package supervisor

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/internal/testenv"
)

// TestCrashLeftoversAreSettled: what a worker killed between the steps of
// a create or a delete leaves (a program file supervisord has not loaded, a
// .deleting file whose group is still loaded, a temporary file) is settled
// by the next Connect: the created program is listed and deletable, the
// deleted one is gone and its name free, the temporary file removed.
func TestCrashLeftoversAreSettled(t *testing.T) {
	testOptions(t) // skips when supervisord is not installed/set up
	dir := t.TempDir()
	startThrowaway(t, dir)
	o := DefaultOptions()
	o.URL = "unix://" + filepath.Join(dir, "s.sock")
	o.ProgramsDir = filepath.Join(dir, "programs")
	o.LogDir = dir
	newDriver := func() *Driver {
		d, err := New(o)
		if err != nil {
			t.Fatal(err)
		}
		testenv.Eventually(t, 20*time.Second, func() error {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			return d.Connect(ctx)
		})
		return d
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	tmpl := func(name string) drivers.InstanceTemplate {
		return drivers.InstanceTemplate{Name: name, BaseImage: "sleep", Command: []string{"sleep", "600"}}
	}

	d1 := newDriver()
	// A delete interrupted after its intent (the rename), group still loaded.
	if _, err := d1.Create(ctx, tmpl("du-deleting")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(d1.programFile("du-deleting"), d1.deletingFile("du-deleting")); err != nil {
		t.Fatal(err)
	}
	// A create interrupted after its intent (the file), never loaded.
	data, err := renderProgram(tmpl("du-pending"), time.Now(), d1.settings())
	if err != nil {
		t.Fatal(err)
	}
	if err := writeExclusive(d1.programFile("du-pending"), data); err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(o.ProgramsDir, "."+o.FilePrefix+"du-torn.conf.tmp-123")
	if err := os.WriteFile(tmp, []byte("[program:du-torn]\ncomm"), 0o644); err != nil {
		t.Fatal(err)
	}
	_ = d1.Close()

	d2 := newDriver() // the restart
	defer d2.Close()
	list, err := d2.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	names := []string{}
	for _, i := range list {
		names = append(names, i.Name)
	}
	if !slices.Contains(names, "du-pending") || slices.Contains(names, "du-deleting") {
		t.Fatalf("after the restart: %v, want du-pending and not du-deleting", names)
	}
	for _, p := range []string{tmp, d2.deletingFile("du-deleting")} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s left after the restart: %v", p, err)
		}
	}
	if _, err := d2.Create(ctx, tmpl("du-deleting")); err != nil {
		t.Errorf("create of the name a finished delete freed: %v", err)
	}
	for _, n := range []string{"du-pending", "du-deleting"} {
		if _, err := d2.Delete(ctx, n, drivers.DeleteOptions{Force: true}); err != nil {
			t.Errorf("delete %s: %v", n, err)
		}
	}
	if list, _ := d2.List(ctx); len(list) != 0 {
		t.Errorf("left after deleting: %+v", list)
	}
}
