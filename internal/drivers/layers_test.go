package drivers_test

import (
	"os/exec"
	"path"
	"strings"
	"testing"
)

const module = "github.com/subbus/subbus"

// component names the layer a package of this module belongs to. The
// layers are cmd -> cli/worker -> client/manager -> drivers; messages (the
// op table and the wire format) sits under client, cli, worker and manager; registry wires the driver
// packages for the worker; harnesses are test-support packages (their
// name ends in "test"); every other package is support code any layer may
// use (config, natsconn, procfs, resilience).
func component(pkg string) string {
	p := strings.TrimPrefix(strings.TrimPrefix(pkg, module), "/")
	under := func(dir string) bool { return p == dir || strings.HasPrefix(p, dir+"/") }
	switch {
	case strings.HasSuffix(path.Base(p), "test"):
		return "harness"
	case under("cmd"):
		return "cmd"
	case under("internal/cli"):
		return "cli"
	case under("internal/worker"):
		return "worker"
	case under("internal/client"), under("client"):
		return "client"
	case under("internal/messages"), under("messages"):
		return "messages"
	case under("internal/manager"):
		return "manager"
	case under("internal/registry"):
		return "registry"
	case under("internal/drivers"):
		return "drivers"
	}
	return "support"
}

// mayImport lists, for each component, the other components its
// (non-test) code may import. Imports inside a component are free.
var mayImport = map[string][]string{
	"cmd":      {"cli", "worker", "client", "messages", "manager", "registry", "drivers", "support"},
	"cli":      {"client", "messages", "drivers", "support"},
	"worker":   {"manager", "registry", "messages", "drivers", "support"},
	"client":   {"messages", "drivers", "support"},
	"messages": {"drivers", "support"},
	"manager":  {"messages", "drivers", "support"},
	"registry": {"drivers", "support"},
	"drivers":  {"support"},
	"support":  {"drivers"},
	"harness":  {"cli", "worker", "client", "messages", "manager", "registry", "drivers", "support"},
}

// TestImportsPointDown fails when a package imports upward: a driver
// importing the manager, worker, wire format, client or CLI; the manager
// importing the client or the worker; anything importing cmd or a
// test harness outside tests. Test files may import upward (a driver's
// conformance test runs it through the manager).
func TestImportsPointDown(t *testing.T) {
	if testing.Short() {
		t.Skip("runs go list over the module")
	}
	out, err := exec.Command("go", "list", "-f", `{{.ImportPath}} {{join .Imports " "}}`, module+"/...").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	graph := map[string][]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		graph[f[0]] = f[1:]
	}
	if !has(graph, module+"/internal/drivers") || !has(graph, module+"/internal/manager") {
		t.Fatalf("go list listed %d packages, not this module's:\n%s", len(graph), out)
	}
	for pkg, imports := range graph {
		from := component(pkg)
		for _, imp := range imports {
			if imp != module && !strings.HasPrefix(imp, module+"/") {
				continue
			}
			if to := component(imp); !allowed(from, to) {
				t.Errorf("%s (%s) imports %s (%s): imports must point down (cmd -> cli/worker -> client/manager -> drivers)", pkg, from, imp, to)
			}
		}
	}
}

func has(graph map[string][]string, pkg string) bool { _, ok := graph[pkg]; return ok }

func allowed(from, to string) bool {
	if from == to {
		return true
	}
	for _, c := range mayImport[from] {
		if c == to {
			return true
		}
	}
	return false
}

// The rule itself: the imports the issue names as upward are refused.
func TestLayerRule(t *testing.T) {
	tests := []struct {
		from, to string
		ok       bool
	}{
		{"internal/drivers/docker", "internal/drivers", true},
		{"internal/drivers/docker", "internal/config", true},
		{"internal/drivers/process", "internal/procfs", true},
		{"internal/drivers/docker", "internal/manager", false},
		{"internal/drivers/lxc", "internal/worker", false},
		{"internal/drivers/supervisor", "internal/messages", false},
		{"internal/drivers/docker", "internal/client", false},
		{"internal/drivers/docker", "internal/cli", false},
		{"internal/drivers/libvirt", "client", false},
		{"internal/drivers/proxmox", "messages", false},
		{"internal/drivers", "internal/registry", false},
		{"internal/drivers/docker", "internal/manager/driverstest", false},
		{"internal/manager", "internal/client", false},
		{"internal/manager", "internal/messages", true},
		{"internal/messages", "internal/manager", false},
		{"internal/messages", "internal/client", false},
		{"internal/manager", "internal/worker", false},
		{"internal/client", "internal/manager", false},
		{"internal/client", "internal/cli", false},
		{"internal/cli", "internal/worker", false},
		{"internal/worker", "internal/cli", false},
		{"internal/worker", "cmd/worker", false},
		{"internal/config", "internal/manager", false},
		{"cmd/worker", "internal/worker", true},
		{"internal/worker", "internal/manager", true},
		{"internal/cli", "client", true},
		{"internal/cli/clitest", "internal/worker", true},
		{"internal/manager/driverstest", "internal/manager", true},
	}
	for _, tc := range tests {
		from, to := component(module+"/"+tc.from), component(module+"/"+tc.to)
		if got := allowed(from, to); got != tc.ok {
			t.Errorf("%s -> %s allowed = %v, want %v", tc.from, tc.to, got, tc.ok)
		}
	}
}
