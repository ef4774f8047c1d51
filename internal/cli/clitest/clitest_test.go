package clitest_test

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/subbus/subbus/internal/cli"
	"github.com/subbus/subbus/internal/cli/clitest"
	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/internal/drivers/process"
	"github.com/subbus/subbus/internal/manager"
)

func TestHarness(t *testing.T) {
	clitest.Isolate(t)
	url := clitest.StartNATS(t)
	clitest.StartWorker(t, url, "h1", manager.New(process.New(process.Options{StateDir: t.TempDir(), Cgroups: "off"}),
		manager.Options{Host: "h1"}))
	name := clitest.Unique("harness")
	t.Cleanup(func() { clitest.Subbus(t, url, "process", "delete", name, "--force") })
	clitest.Subbus(t, url, "process", "create", name, "--image", "/bin/sleep", "--", "60").Want(t, 0, "create")
	r := clitest.Subbus(t, url, "process", "list", "--json").Want(t, 0, "list")
	var list []drivers.Instance
	if err := json.Unmarshal([]byte(r.Stdout), &list); err != nil || len(list) != 1 || list[0].Name != name {
		t.Fatalf("list: %v %s", err, r.Stdout)
	}
	r = clitest.Subbus(t, url, "process", "get", "nope").Want(t, cli.ExitNotFound, "get a missing instance")
	if !strings.HasPrefix(r.Stderr, "error: not_found:") {
		t.Fatalf("stderr %q", r.Stderr)
	}
}
