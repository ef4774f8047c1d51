package pvesim

import (
	"crypto/hmac"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Version is what GET /version reports.
const (
	pveVersion = "9.1.3"
	pveRelease = "9.1"
	pveRepoID  = "e5010dce"
)

func hNull(s *Sim, r *req) (any, map[string]any, error) { return nil, nil, nil }

// hTicket is POST /access/ticket: root@pam (or "root" with realm pam)
// with the configured password gets a ticket and a CSRF token.
func hTicket(s *Sim, r *req) (any, map[string]any, error) {
	user := r.str("username")
	if realm := r.str("realm"); realm != "" && !strings.Contains(user, "@") {
		user += "@" + realm
	}
	pw := r.str("password")
	// A valid ticket works as the password: that renews it (PVE; proxmoxer
	// does so every hour).
	renewed := false
	if tu, ok := s.verifyTicket(pw); ok && tu == user {
		renewed = true
	}
	if !renewed && (s.opts.Password == "-" || user != "root@pam" || !hmac.Equal([]byte(pw), []byte(s.opts.Password))) {
		return nil, nil, errAuthFailed
	}
	now := time.Now()
	return map[string]any{
		"username":            user,
		"ticket":              s.ticket(user, now),
		"CSRFPreventionToken": s.csrf(user, now),
		"clustername":         s.clusterName(),
		"cap": map[string]any{
			"vms":     map[string]any{"VM.PowerMgmt": 1, "VM.Allocate": 1, "VM.Audit": 1, "VM.Config.Options": 1, "VM.Snapshot": 1, "VM.Clone": 1},
			"nodes":   map[string]any{"Sys.Audit": 1, "Sys.Modify": 1},
			"storage": map[string]any{"Datastore.Allocate": 1, "Datastore.AllocateSpace": 1, "Datastore.Audit": 1},
		},
	}, nil, nil
}

func (s *Sim) clusterName() any {
	if len(s.nodes) > 1 {
		return s.opts.ClusterName
	}
	return nil
}

func hVersion(s *Sim, r *req) (any, map[string]any, error) {
	return map[string]any{"version": pveVersion, "release": pveRelease, "repoid": pveRepoID, "console": "html5"}, nil, nil
}

// hNextID answers with a string, as real PVE does (the schema says integer).
func hNextID(s *Sim, r *req) (any, map[string]any, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if r.has("vmid") {
		id := r.int("vmid", 0)
		if s.guests[int(id)] != nil {
			return nil, nil, paramError(map[string]string{"vmid": fmt.Sprintf("VM %d already exists", id)})
		}
		return r.str("vmid"), nil, nil
	}
	return strconv.Itoa(s.nextID()), nil, nil
}

func (s *Sim) quorate() bool {
	online := 0
	for _, n := range s.nodes {
		if n.online {
			online++
		}
	}
	return online*2 > len(s.nodes)
}

func hClusterStatus(s *Sim, r *req) (any, map[string]any, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := []any{}
	if len(s.nodes) > 1 {
		out = append(out, map[string]any{"type": "cluster", "id": "cluster", "name": s.opts.ClusterName,
			"nodes": len(s.nodes), "quorate": b2i(s.quorate()), "version": len(s.nodes) + 1})
	}
	for i, n := range s.nodes {
		out = append(out, map[string]any{"type": "node", "id": "node/" + n.name, "name": n.name,
			"nodeid": i + 1, "ip": fmt.Sprintf("127.0.1.%d", i+1), "online": b2i(n.online), "local": b2i(i == 0), "level": ""})
	}
	return out, nil, nil
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

const (
	nodeCPUs = 8
	nodeMem  = int64(32) << 30
)

func (s *Sim) nodeUsage(n *simNode, now time.Time) (cpu float64, mem int64) {
	mem = 2 << 30
	for _, g := range s.guests {
		if g.node == n.name && g.running() {
			c, m, _, _, _, _, _ := g.stats(now)
			cpu += c * float64(g.cores()) / nodeCPUs
			mem += m
		}
	}
	return cpu + 0.01, mem
}

func hNodes(s *Sim, r *req) (any, map[string]any, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	out := []any{}
	for _, n := range s.nodes {
		e := map[string]any{"node": n.name, "id": "node/" + n.name, "type": "node", "status": "offline"}
		if n.online {
			cpu, mem := s.nodeUsage(n, now)
			e["status"] = "online"
			e["cpu"], e["maxcpu"], e["mem"], e["maxmem"] = cpu, nodeCPUs, mem, nodeMem
			e["disk"], e["maxdisk"] = int64(8)<<30, int64(100)<<30
			e["uptime"] = int64(now.Sub(n.since).Seconds()) + 86400
			e["level"] = ""
			e["ssl_fingerprint"] = s.fingerprint
		}
		out = append(out, e)
	}
	return out, nil, nil
}

func hNodeStatus(s *Sim, r *req) (any, map[string]any, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := s.node(r.str("node"))
	now := time.Now()
	cpu, mem := s.nodeUsage(n, now)
	return map[string]any{
		"cpu":        cpu,
		"wait":       0.001,
		"uptime":     int64(now.Sub(n.since).Seconds()) + 86400,
		"idle":       0,
		"loadavg":    []any{"0.15", "0.10", "0.05"},
		"kversion":   "Linux 6.14.8-2-pve #1 SMP PREEMPT_DYNAMIC PMX 6.14.8-2 (2025-07-22T10:04Z) x86_64",
		"pveversion": "pve-manager/" + pveVersion + "/" + pveRepoID,
		"cpuinfo": map[string]any{"cpus": nodeCPUs, "cores": nodeCPUs / 2, "sockets": 1, "model": "pvesim virtual CPU",
			"mhz": "2400.000", "hvm": "1", "flags": "fpu vme de pse tsc msr pae", "user_hz": 100},
		"memory":         map[string]any{"total": nodeMem, "used": mem, "free": nodeMem - mem, "available": nodeMem - mem},
		"swap":           map[string]any{"total": int64(8) << 30, "used": 0, "free": int64(8) << 30},
		"rootfs":         map[string]any{"total": int64(100) << 30, "used": int64(8) << 30, "free": int64(92) << 30, "avail": int64(87) << 30},
		"ksm":            map[string]any{"shared": 0},
		"boot-info":      map[string]any{"mode": "efi", "secureboot": 0},
		"current-kernel": map[string]any{"sysname": "Linux", "release": "6.14.8-2-pve", "version": "#1 SMP PREEMPT_DYNAMIC PMX 6.14.8-2", "machine": "x86_64"},
	}, nil, nil
}

func storageEntry(st *storage, withName bool) map[string]any {
	used := st.used()
	e := map[string]any{"type": st.typ, "content": st.content, "active": 1, "enabled": 1, "shared": b2i(st.shared),
		"total": st.total, "used": used, "avail": st.total - used}
	if withName {
		e["storage"] = st.id
		e["used_fraction"] = float64(used) / float64(st.total)
	}
	return e
}

func hStorageList(s *Sim, r *req) (any, map[string]any, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := s.node(r.str("node"))
	out := []any{}
	for _, st := range n.storages {
		if c := r.str("content"); c != "" && !contentMatches(st.content, c) {
			continue
		}
		if id := r.str("storage"); id != "" && id != st.id {
			continue
		}
		out = append(out, storageEntry(st, true))
	}
	return out, nil, nil
}

func contentMatches(have, want string) bool {
	for _, w := range strings.Split(want, ",") {
		for _, h := range strings.Split(have, ",") {
			if w == h {
				return true
			}
		}
	}
	return false
}

func (s *Sim) storageOr404(node, id string) (*storage, error) {
	st := s.node(node).storage(id)
	if st == nil {
		return nil, errf("storage '%s' does not exist", id)
	}
	return st, nil
}

func hStorageStatus(s *Sim, r *req) (any, map[string]any, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st, err := s.storageOr404(r.str("node"), r.str("storage"))
	if err != nil {
		return nil, nil, err
	}
	return storageEntry(st, false), nil, nil
}

func hStorageContent(s *Sim, r *req) (any, map[string]any, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st, err := s.storageOr404(r.str("node"), r.str("storage"))
	if err != nil {
		return nil, nil, err
	}
	out := []any{}
	for _, id := range sortedVolIDs(st) {
		v := st.volumes[id]
		if c := r.str("content"); c != "" && c != v.content {
			continue
		}
		if r.has("vmid") && int64(v.vmid) != r.int("vmid", 0) {
			continue
		}
		e := map[string]any{"volid": v.volid, "content": v.content, "format": v.format, "size": v.size, "ctime": v.ctime}
		if v.vmid != 0 {
			e["vmid"] = v.vmid
		}
		out = append(out, e)
	}
	return out, nil, nil
}

func sortedVolIDs(st *storage) []string {
	m := make(map[string]string, len(st.volumes))
	for k := range st.volumes {
		m[k] = ""
	}
	return sortedKeys(m)
}

func hNetwork(s *Sim, r *req) (any, map[string]any, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := s.node(r.str("node"))
	typ := r.str("type")
	out := []any{}
	if typ == "" || typ == "eth" {
		out = append(out, map[string]any{"iface": "eno1", "type": "eth", "method": "manual", "families": []any{"inet"},
			"active": 1, "exists": 1, "priority": 1})
	}
	for i, b := range n.bridges {
		if typ != "" && typ != "bridge" && typ != "any_bridge" && typ != "any_local_bridge" {
			continue
		}
		e := map[string]any{"iface": b, "type": "bridge", "method": "static", "families": []any{"inet"},
			"active": 1, "autostart": 1, "bridge_ports": "", "bridge_stp": "off", "bridge_fd": "0", "priority": i + 2}
		if i == 0 {
			e["bridge_ports"] = "eno1"
			e["address"], e["netmask"], e["cidr"], e["gateway"] = "192.0.2.10", "255.255.255.0", "192.0.2.10/24", "192.0.2.1"
		}
		out = append(out, e)
	}
	return out, nil, nil
}

// hResources is /cluster/resources: nodes, storages and guests of every
// node; guests of an offline node show status "unknown".
func hResources(s *Sim, r *req) (any, map[string]any, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	typ := r.str("type")
	now := time.Now()
	out := []any{}
	if typ == "" || typ == "vm" {
		for _, id := range s.vmids() {
			g := s.guests[id]
			n := s.node(g.node)
			e := s.guestSummary(g, now)
			e["id"] = fmt.Sprintf("%s/%d", g.kind, g.vmid)
			e["type"] = g.kind
			e["node"] = g.node
			// /cluster/resources says maxcpu where the guest lists say cpus.
			e["maxcpu"] = e["cpus"]
			delete(e, "cpus")
			if n != nil && !n.online {
				e["status"] = "unknown"
			}
			out = append(out, e)
		}
	}
	if typ == "" || typ == "node" {
		for _, n := range s.nodes {
			e := map[string]any{"id": "node/" + n.name, "type": "node", "node": n.name, "status": "offline"}
			if n.online {
				cpu, mem := s.nodeUsage(n, now)
				e["status"] = "online"
				e["cpu"], e["maxcpu"], e["mem"], e["maxmem"] = cpu, nodeCPUs, mem, nodeMem
				e["disk"], e["maxdisk"] = int64(8)<<30, int64(100)<<30
				e["uptime"] = int64(now.Sub(n.since).Seconds()) + 86400
				e["level"] = ""
				e["cgroup-mode"] = 2
			}
			out = append(out, e)
		}
	}
	if typ == "" || typ == "storage" {
		for _, n := range s.nodes {
			for _, st := range n.storages {
				e := map[string]any{"id": "storage/" + n.name + "/" + st.id, "type": "storage", "node": n.name,
					"storage": st.id, "plugintype": st.typ, "content": st.content, "shared": b2i(st.shared), "status": "available",
					"disk": st.used(), "maxdisk": st.total}
				if !n.online {
					e["status"] = "unknown"
				}
				out = append(out, e)
			}
		}
	}
	return out, nil, nil
}
