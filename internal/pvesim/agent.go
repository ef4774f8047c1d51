package pvesim

import (
	"crypto/sha1"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// AgentResult is the scripted outcome of a guest-agent exec.
type AgentResult struct {
	ExitCode int
	Stdout   string
	Stderr   string
	// Duration is how long the "process" runs before exec-status says
	// exited.
	Duration time.Duration
}

// AgentFunc scripts guest-agent exec: given the guest's vmid and name,
// the command and its input-data, it returns what the command "does".
// The simulator never runs a real command.
type AgentFunc func(vmid int, name string, command []string, input string) AgentResult

// DefaultAgent knows a few commands: echo ARGS, hostname, cat (echoes
// input), true, false, sleep N, uname [-a], id, sh -c 'exit N'; anything
// else is "command not found" (exit 127).
func DefaultAgent(vmid int, name string, command []string, input string) AgentResult {
	if len(command) == 0 {
		return AgentResult{Stdout: input}
	}
	prog := command[0][strings.LastIndexByte(command[0], '/')+1:]
	args := command[1:]
	switch prog {
	case "echo":
		return AgentResult{Stdout: strings.Join(args, " ") + "\n"}
	case "hostname":
		return AgentResult{Stdout: name + "\n"}
	case "cat":
		return AgentResult{Stdout: input}
	case "true":
		return AgentResult{}
	case "false":
		return AgentResult{ExitCode: 1}
	case "sleep":
		if len(args) > 0 {
			if f, err := strconv.ParseFloat(args[0], 64); err == nil {
				return AgentResult{Duration: time.Duration(f * float64(time.Second))}
			}
		}
		return AgentResult{ExitCode: 1, Stderr: "sleep: missing operand\n"}
	case "uname":
		if len(args) > 0 && args[0] == "-a" {
			return AgentResult{Stdout: fmt.Sprintf("Linux %s 6.1.0-28-amd64 #1 SMP PREEMPT_DYNAMIC Debian 6.1.119-1 x86_64 GNU/Linux\n", name)}
		}
		return AgentResult{Stdout: "Linux\n"}
	case "id":
		return AgentResult{Stdout: "uid=0(root) gid=0(root) groups=0(root)\n"}
	case "sh", "bash":
		if len(args) == 2 && args[0] == "-c" && strings.HasPrefix(args[1], "exit ") {
			if n, err := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(args[1], "exit "))); err == nil {
				return AgentResult{ExitCode: n}
			}
		}
		if len(args) == 2 && args[0] == "-c" && strings.HasPrefix(args[1], "echo ") {
			return AgentResult{Stdout: strings.TrimPrefix(args[1], "echo ") + "\n"}
		}
	}
	return AgentResult{ExitCode: 127, Stderr: fmt.Sprintf("%s: command not found\n", command[0])}
}

type agentExec struct {
	result AgentResult
	start  time.Time
}

func agentEnabled(v string) bool {
	for _, part := range strings.Split(v, ",") {
		if part == "1" || part == "enabled=1" {
			return true
		}
	}
	return false
}

// agentGuest is assert_agent_available: configured, running, agent up.
func (s *Sim) agentGuest(r *req) (*guest, error) {
	g, err := s.guestLocked("qemu", r.str("node"), vmidOf(r))
	if err != nil {
		return nil, err
	}
	v, ok := g.config["agent"]
	if !ok {
		return nil, errf("No QEMU guest agent configured")
	}
	if !g.running() {
		return nil, errf("VM %d is not running", g.vmid)
	}
	if !agentEnabled(v) || g.paused || time.Since(g.startedAt) < s.opts.Delays.AgentStart {
		return nil, errf("QEMU guest agent is not running")
	}
	return g, nil
}

func hAgentPing(s *Sim, r *req) (any, map[string]any, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, err := s.agentGuest(r); err != nil {
		return nil, nil, err
	}
	return map[string]any{"result": map[string]any{}}, nil, nil
}

func hAgentExec(s *Sim, r *req) (any, map[string]any, error) {
	s.mu.Lock()
	g, err := s.agentGuest(r)
	if err != nil {
		s.mu.Unlock()
		return nil, nil, err
	}
	cmd := r.list("command")
	input, hasInput := r.params["input-data"]
	if len(cmd) == 0 && !hasInput {
		s.mu.Unlock()
		return nil, nil, errf("command or input-data (or both) required")
	}
	vmid, name := g.vmid, g.name()
	s.mu.Unlock()
	in, _ := scalarString(input)
	res := s.opts.Agent(vmid, name, cmd, in)
	s.mu.Lock()
	defer s.mu.Unlock()
	g.execPID++
	pid := g.execPID
	g.execs[pid] = &agentExec{result: res, start: time.Now()}
	return map[string]any{"pid": pid}, nil, nil
}

func hAgentExecStatus(s *Sim, r *req) (any, map[string]any, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	g, err := s.agentGuest(r)
	if err != nil {
		return nil, nil, err
	}
	pid := int(r.int("pid", 0))
	e := g.execs[pid]
	if e == nil {
		return nil, nil, errf("Agent error: GuestExecStatus: Invalid parameter 'pid'")
	}
	if time.Since(e.start) < e.result.Duration {
		return map[string]any{"exited": 0}, nil, nil
	}
	out := map[string]any{"exited": 1, "exitcode": e.result.ExitCode}
	if e.result.Stdout != "" {
		out["out-data"] = e.result.Stdout
	}
	if e.result.Stderr != "" {
		out["err-data"] = e.result.Stderr
	}
	// The agent forgets a finished process once its status was read.
	delete(g.execs, pid)
	return out, nil, nil
}

func hAgentInfo(cmd string) handlerFunc {
	return func(s *Sim, r *req) (any, map[string]any, error) {
		s.mu.Lock()
		defer s.mu.Unlock()
		g, err := s.agentGuest(r)
		if err != nil {
			return nil, nil, err
		}
		var res any
		switch cmd {
		case "get-host-name":
			res = map[string]any{"host-name": g.name()}
		case "get-osinfo":
			res = map[string]any{"id": "debian", "name": "Debian GNU/Linux", "pretty-name": "Debian GNU/Linux 12 (bookworm)",
				"version": "12 (bookworm)", "version-id": "12", "kernel-release": "6.1.0-28-amd64", "machine": "x86_64"}
		case "network-get-interfaces":
			res = []any{
				map[string]any{"name": "lo", "hardware-address": "00:00:00:00:00:00",
					"ip-addresses": []any{map[string]any{"ip-address": "127.0.0.1", "ip-address-type": "ipv4", "prefix": 8}}},
				map[string]any{"name": "eth0", "hardware-address": strings.ToLower(macOf(g.config["net0"])),
					"ip-addresses": []any{map[string]any{"ip-address": ipOf(g), "ip-address-type": "ipv4", "prefix": 24}}},
			}
		}
		return map[string]any{"result": res}, nil, nil
	}
}

func ipOf(g *guest) string { ip, _ := guestIP(g); return ip }

func macOf(net string) string {
	for _, p := range strings.Split(net, ",") {
		k, v, ok := strings.Cut(p, "=")
		if ok && (k == "virtio" || k == "e1000" || k == "e1000e" || k == "rtl8139" || k == "vmxnet3" || k == "hwaddr" || k == "macaddr") {
			return v
		}
	}
	return "bc:24:11:00:00:00"
}

// guestIP is the address a running guest's first NIC reports: the static
// ip= of an LXC net0, else 192.0.2.(100 + vmid%100)/24 (TEST-NET-1).
func guestIP(g *guest) (string, int) {
	for _, p := range strings.Split(g.config["net0"], ",") {
		if v, ok := strings.CutPrefix(p, "ip="); ok && strings.Contains(v, "/") {
			addr, prefix, _ := strings.Cut(v, "/")
			n, _ := strconv.Atoi(prefix)
			return addr, n
		}
	}
	return fmt.Sprintf("192.0.2.%d", 100+g.vmid%100), 24
}

// hLXCInterfaces is GET /nodes/{node}/lxc/{vmid}/interfaces: null for a
// stopped CT (get_interfaces finds no pid), else lo and eth0.
func hLXCInterfaces(s *Sim, r *req) (any, map[string]any, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	g, err := s.guestLocked("lxc", r.str("node"), vmidOf(r))
	if err != nil {
		return nil, nil, err
	}
	if !g.running() {
		return nil, nil, nil
	}
	ip, prefix := guestIP(g)
	mac := strings.ToLower(macOf(g.config["net0"]))
	return []any{
		map[string]any{"name": "lo", "hwaddr": "00:00:00:00:00:00", "hardware-address": "00:00:00:00:00:00", "inet": "127.0.0.1/8",
			"ip-addresses": []any{map[string]any{"ip-address": "127.0.0.1", "ip-address-type": "inet", "prefix": 8}}},
		map[string]any{"name": "eth0", "hwaddr": mac, "hardware-address": mac, "inet": fmt.Sprintf("%s/%d", ip, prefix),
			"ip-addresses": []any{map[string]any{"ip-address": ip, "ip-address-type": "inet", "prefix": prefix}}},
	}, nil, nil
}

// hVNets is GET /cluster/sdn/vnets: the seeded SDN vnets.
func hVNets(s *Sim, r *req) (any, map[string]any, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := []any{}
	for _, v := range s.vnets {
		e := map[string]any{"vnet": v.VNet, "zone": v.Zone, "type": "vnet", "digest": randHexStable(v.VNet)}
		if v.Tag != 0 {
			e["tag"] = v.Tag
		}
		if v.Alias != "" {
			e["alias"] = v.Alias
		}
		out = append(out, e)
	}
	return out, nil, nil
}

func randHexStable(s string) string {
	h := sha1.Sum([]byte(s))
	return hex.EncodeToString(h[:])
}
