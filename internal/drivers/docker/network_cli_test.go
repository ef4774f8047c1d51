package docker_test

import (
	"encoding/json"
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/subbus/subbus/internal/cli"
	"github.com/subbus/subbus/internal/cli/clitest"
	"github.com/subbus/subbus/messages"
)

// TestNetworkCLI: what a user sees of networks through a worker.
// `network list` has the ATTACHABLE and MANAGED columns (Docker's host
// network is not attachable; a network subbus did not create is not
// managed); a second attach prints "already attached" and answers
// changed=false; an address outside the subnet is invalid_argument (exit
// 3) and detach from a network never attached is not_found (exit 4).
func TestNetworkCLI(t *testing.T) {
	f := startFleet(t)
	home := internalNetwork(t)
	subnetNet := clitest.Unique("sbdk-e2e-sub")
	prefix := "" // "10.213.N." of a free /24
	for n := range 200 {
		p := fmt.Sprintf("10.213.%d.", (int(time.Now().UnixNano())+n)%250)
		if exec.Command("docker", "network", "create", "--internal", "--label", "io.subbus.test=true",
			"--subnet", p+"0/24", subnetNet).Run() == nil {
			prefix = p
			break
		}
	}
	if prefix == "" {
		t.Fatal("no free 10.213.N.0/24 subnet for an internal network")
	}
	t.Cleanup(func() { _ = exec.Command("docker", "network", "rm", subnetNet).Run() })
	name := clitest.Unique("sbdk-e2e-net")
	cleanup(t, name)
	f.OK("docker", "create", name, "--image", e2eImage, "--network", home, "--", "sleep", "60")

	table := f.OK("docker", "network", "list")
	if !strings.Contains(strings.SplitN(table, "\n", 2)[0], "ATTACHABLE") || !strings.Contains(table, "MANAGED") {
		t.Errorf("network list header lacks ATTACHABLE/MANAGED: %q", table)
	}
	var nets []messages.Network
	if err := json.Unmarshal([]byte(f.OK("docker", "network", "list", "--json")), &nets); err != nil {
		t.Fatal(err)
	}
	find := func(n string) messages.Network {
		i := slices.IndexFunc(nets, func(x messages.Network) bool { return x.Name == n })
		if i < 0 {
			t.Fatalf("network list lacks %s: %+v", n, nets)
		}
		return nets[i]
	}
	if h := find("host"); h.Attachable || h.Managed {
		t.Errorf("host network %+v, want not attachable, not managed", h)
	}
	if s := find(subnetNet); !s.Attachable || s.Managed || !s.Internal || s.Subnet != prefix+"0/24" {
		t.Errorf("%s %+v, want attachable, internal, unmanaged, subnet %s0/24", subnetNet, s, prefix)
	}

	if out := f.OK("docker", "network", "attach", name, subnetNet+"="+prefix+"20"); !strings.Contains(out, "attached") || strings.Contains(out, "already") {
		t.Errorf("first attach printed %q", out)
	}
	if out := f.OK("docker", "network", "attach", name, subnetNet+"="+prefix+"20"); !strings.Contains(out, "already attached") {
		t.Errorf("second attach printed %q, want already attached", out)
	}
	var res messages.ChangedResult
	if err := json.Unmarshal([]byte(f.OK("docker", "network", "attach", name, subnetNet, "--json")), &res); err != nil || res.Changed {
		t.Errorf("attach again --json: %+v %v, want changed=false", res, err)
	}
	f.OK("docker", "network", "detach", name, subnetNet)
	f.Expect(cli.ExitInvalidArgument, "docker", "network", "attach", name, subnetNet+"=10.9.9.9")
	f.Expect(cli.ExitNotFound, "docker", "network", "detach", name, subnetNet)
	var inst messages.Instance
	if err := json.Unmarshal([]byte(f.OK("docker", "get", name, "--json")), &inst); err != nil {
		t.Fatal(err)
	}
	if slices.ContainsFunc(inst.Networks, func(n messages.NetworkConfig) bool { return n.NetworkName == subnetNet }) {
		t.Errorf("a refused attach left %s: %+v", subnetNet, inst.Networks)
	}
}
