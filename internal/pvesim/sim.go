// Package pvesim is a stateful simulator of the Proxmox VE HTTP API
// (/api2/json): nodes, storages, bridges, QEMU VMs and LXC containers,
// UPID tasks with logs and asynchronous exit statuses, config locks,
// snapshots, clones, templates and a scripted QEMU guest agent. It speaks
// PVE's wire format (envelope, reason-phrase errors, ticket and token
// auth, CSRF, 0/1 booleans) and validates every request against PVE's
// published API schema when given one (see LoadSchema), else against its
// own route table.
//
// Tests use it in-process with Start (an HTTPS server on 127.0.0.1) or
// New + Handler; Sim's exported methods change state "as if done in the
// PVE UI" and inject faults. cmd/pvesim runs it as a program.
package pvesim

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Options configure a simulator. The zero value is usable: one node
// "pve1", root@pam with password "pvesim", no tokens, the builtin route
// table, default delays.
type Options struct {
	// Nodes are the cluster's node names (default ["pve1"]).
	Nodes []string
	// Password is root@pam's password for POST /access/ticket
	// (default "pvesim"; "-" disables ticket logins).
	Password string
	// Tokens are API tokens "user@realm!name=SECRET" with root's
	// privileges (privilege separation off).
	Tokens []string
	// RestrictedTokens are tokens with privilege separation and no ACLs:
	// every call but GET /version answers 403 "Permission check failed".
	RestrictedTokens []string
	// Schema validates every request (nil: the builtin route table).
	Schema *Schema
	// Seed is the starting inventory (nil: empty cluster).
	Seed *Seed
	// Delays are how long the simulated operations take.
	Delays Delays
	// AuthFailureDelay delays every 401 answer (PVE: 3 s; default 3 s,
	// negative: none).
	AuthFailureDelay time.Duration
	// Agent scripts the QEMU guest agent's exec (nil: DefaultAgent).
	Agent AgentFunc
	// ClusterName is /cluster/status's cluster name (default "pvesim";
	// with a single node there is no cluster entry, as on a standalone node).
	ClusterName string
	// LockTimeout is how long an operation waits for a guest's config
	// file lock held by another task (PVE: 10 s, the default) before
	// failing with "can't lock file '...' - got timeout".
	LockTimeout time.Duration
	// Control serves the control API under /pvesim/ (see docs/pvesim.md).
	Control bool
	// Latency delays every API answer.
	Latency time.Duration
	// Logf logs requests and events (nil: silent).
	Logf func(format string, args ...any)
}

// Delays are the durations of simulated operations. Zero fields take the
// defaults of DefaultDelays; use a negative value for "immediately".
type Delays struct {
	Create, Start, Stop, Shutdown, Reboot, Snapshot, Rollback, Clone, Delete, Config time.Duration
	// AgentStart is how long after start the guest agent answers.
	AgentStart time.Duration
}

// DefaultDelays are short enough for tests and long enough that a client
// sees the tasks running.
var DefaultDelays = Delays{
	Create:     150 * time.Millisecond,
	Start:      200 * time.Millisecond,
	Stop:       100 * time.Millisecond,
	Shutdown:   300 * time.Millisecond,
	Reboot:     300 * time.Millisecond,
	Snapshot:   150 * time.Millisecond,
	Rollback:   150 * time.Millisecond,
	Clone:      250 * time.Millisecond,
	Delete:     100 * time.Millisecond,
	Config:     50 * time.Millisecond,
	AgentStart: 100 * time.Millisecond,
}

func (d Delays) withDefaults() Delays {
	pick := func(v, def time.Duration) time.Duration {
		switch {
		case v == 0:
			return def
		case v < 0:
			return 0
		}
		return v
	}
	return Delays{
		Create: pick(d.Create, DefaultDelays.Create), Start: pick(d.Start, DefaultDelays.Start),
		Stop: pick(d.Stop, DefaultDelays.Stop), Shutdown: pick(d.Shutdown, DefaultDelays.Shutdown),
		Reboot: pick(d.Reboot, DefaultDelays.Reboot), Snapshot: pick(d.Snapshot, DefaultDelays.Snapshot),
		Rollback: pick(d.Rollback, DefaultDelays.Rollback), Clone: pick(d.Clone, DefaultDelays.Clone),
		Delete: pick(d.Delete, DefaultDelays.Delete), Config: pick(d.Config, DefaultDelays.Config),
		AgentStart: pick(d.AgentStart, DefaultDelays.AgentStart),
	}
}

// Scale multiplies every delay by f (for a slower, more realistic
// simulator: cmd/pvesim --delay-factor).
func (d Delays) Scale(f float64) Delays {
	d = d.withDefaults()
	m := func(v time.Duration) time.Duration {
		if r := time.Duration(float64(v) * f); r > 0 {
			return r
		}
		return -1 // immediately (0 would mean "default")
	}
	return Delays{m(d.Create), m(d.Start), m(d.Stop), m(d.Shutdown), m(d.Reboot), m(d.Snapshot), m(d.Rollback), m(d.Clone), m(d.Delete), m(d.Config), m(d.AgentStart)}
}

// Sim is the simulator's state. All methods are safe for concurrent use.
type Sim struct {
	mu         sync.Mutex
	opts       Options
	schema     *Schema
	builtin    *Schema
	secret     []byte
	tokens     map[string]string // "user@realm!name" -> secret
	restricted map[string]string
	nodes      []*simNode
	guests     map[int]*guest
	tasks      []*task
	taskIdx    map[string]*task
	pid        int
	faults     []*Fault
	hang       map[string]bool // task types that never finish ("" = all)
	flocks     map[string]chan struct{}
	vnets      []VNetSpec
	reqlog     []Request
	started    time.Time
	// fingerprint is the serving certificate's (for /nodes).
	fingerprint string
}

type simNode struct {
	name     string
	online   bool
	storages []*storage
	bridges  []string
	since    time.Time
}

type storage struct {
	id, typ, content string
	shared           bool
	total            int64
	volumes          map[string]*volume // volid -> volume
}

type volume struct {
	volid, content, format string
	size                   int64
	vmid                   int
	ctime                  int64
}

// New builds a simulator from opts.
func New(opts Options) (*Sim, error) {
	if len(opts.Nodes) == 0 {
		opts.Nodes = []string{"pve1"}
	}
	if opts.Password == "" {
		opts.Password = "pvesim"
	}
	if opts.AuthFailureDelay == 0 {
		opts.AuthFailureDelay = 3 * time.Second
	}
	if opts.ClusterName == "" {
		opts.ClusterName = "pvesim"
	}
	if opts.Agent == nil {
		opts.Agent = DefaultAgent
	}
	opts.Delays = opts.Delays.withDefaults()
	if opts.LockTimeout <= 0 {
		opts.LockTimeout = 10 * time.Second
	}
	s := &Sim{
		opts:       opts,
		schema:     opts.Schema,
		builtin:    builtinSchema(),
		tokens:     map[string]string{},
		restricted: map[string]string{},
		guests:     map[int]*guest{},
		taskIdx:    map[string]*task{},
		pid:        0x1f00,
		hang:       map[string]bool{},
		flocks:     map[string]chan struct{}{},
		started:    time.Now(),
	}
	s.secret = make([]byte, 32)
	if _, err := rand.Read(s.secret); err != nil {
		return nil, err
	}
	for i, list := range [][]string{opts.Tokens, opts.RestrictedTokens} {
		for _, t := range list {
			id, secret, ok := strings.Cut(t, "=")
			if !ok || !strings.Contains(id, "!") || !strings.Contains(id, "@") || secret == "" {
				return nil, fmt.Errorf("token %q: want user@realm!name=SECRET", t)
			}
			if i == 0 {
				s.tokens[id] = secret
			} else {
				s.restricted[id] = secret
			}
		}
	}
	seen := map[string]bool{}
	for _, n := range opts.Nodes {
		if !reNodeName.MatchString(n) || seen[n] {
			return nil, fmt.Errorf("node name %q: invalid or duplicate", n)
		}
		seen[n] = true
		s.nodes = append(s.nodes, newNode(n))
	}
	if opts.Seed != nil {
		if err := s.applySeed(opts.Seed); err != nil {
			return nil, err
		}
	}
	return s, nil
}

func newNode(name string) *simNode {
	n := &simNode{name: name, online: true, since: time.Now(), bridges: []string{"vmbr0", "vmbr1"}}
	local := &storage{id: "local", typ: "dir", content: "backup,iso,vztmpl", total: 100 << 30, volumes: map[string]*volume{}}
	lvm := &storage{id: "local-lvm", typ: "lvmthin", content: "images,rootdir", total: 400 << 30, volumes: map[string]*volume{}}
	now := time.Now().Unix()
	for _, v := range []volume{
		{volid: "local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst", content: "vztmpl", format: "tzst", size: 126 << 20},
		{volid: "local:vztmpl/alpine-3.20-default_20240908_amd64.tar.xz", content: "vztmpl", format: "txz", size: 3 << 20},
		{volid: "local:iso/debian-12.7.0-amd64-netinst.iso", content: "iso", format: "iso", size: 631 << 20},
	} {
		v := v
		v.ctime = now
		local.volumes[v.volid] = &v
	}
	n.storages = []*storage{local, lvm}
	return n
}

func (s *Sim) logf(format string, args ...any) {
	if s.opts.Logf != nil {
		s.opts.Logf(format, args...)
	}
}

func (s *Sim) node(name string) *simNode {
	for _, n := range s.nodes {
		if n.name == name {
			return n
		}
	}
	return nil
}

func (n *simNode) storage(id string) *storage {
	for _, st := range n.storages {
		if st.id == id {
			return st
		}
	}
	return nil
}

func (st *storage) used() int64 {
	var u int64
	for _, v := range st.volumes {
		u += v.size
	}
	return u
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func randMAC() string {
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	// BC:24:11 is Proxmox's OUI, used by PVE for generated MACs.
	return fmt.Sprintf("BC:24:11:%02X:%02X:%02X", b[0], b[1], b[2])
}

// nextID is /cluster/nextid's answer: the lowest free vmid >= 100.
func (s *Sim) nextID() int {
	for id := 100; ; id++ {
		if s.guests[id] == nil {
			return id
		}
	}
}

// ---- direct state hooks ("as if done in the PVE UI/CLI") ----

// GuestSpec describes a guest for the seed and for CreateGuest.
type GuestSpec struct {
	VMID int `json:"vmid" yaml:"vmid"`
	// Kind is "qemu" (default) or "lxc".
	Kind string `json:"kind" yaml:"kind"`
	// Node defaults to the first node.
	Node string `json:"node" yaml:"node"`
	// Name is the VM name or the CT hostname.
	Name string `json:"name" yaml:"name"`
	// Status is "stopped" (default), "running" or "paused" (QEMU only).
	Status   string `json:"status" yaml:"status"`
	Template bool   `json:"template" yaml:"template"`
	// Config holds further config keys (cores, memory, net0, agent, tags,
	// description, scsi0/rootfs as allocated volumes...). Values are
	// strings, numbers or booleans.
	Config map[string]any `json:"config" yaml:"config"`
	// Snapshots are created in order, each the parent of the next.
	Snapshots []SnapshotSpec `json:"snapshots" yaml:"snapshots"`
}

// SnapshotSpec is one seeded snapshot.
type SnapshotSpec struct {
	Name        string `json:"name" yaml:"name"`
	Description string `json:"description" yaml:"description"`
	VMState     bool   `json:"vmstate" yaml:"vmstate"`
}

// CreateGuest adds a guest directly, with no task (like restoring or
// creating it outside the API). Disks given as "STORAGE:SIZE" are
// allocated as on create.
func (s *Sim) CreateGuest(spec GuestSpec) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.createGuestLocked(spec)
}

func (s *Sim) createGuestLocked(spec GuestSpec) error {
	if spec.Kind == "" {
		spec.Kind = "qemu"
	}
	if spec.Kind != "qemu" && spec.Kind != "lxc" {
		return fmt.Errorf("guest %d: kind %q: want qemu or lxc", spec.VMID, spec.Kind)
	}
	if spec.VMID == 0 {
		spec.VMID = s.nextID()
	}
	if spec.VMID < 100 || spec.VMID > 999999999 {
		return fmt.Errorf("guest %d: vmid out of range", spec.VMID)
	}
	if g := s.guests[spec.VMID]; g != nil {
		return fmt.Errorf("%s %d already exists on node '%s'", g.typeWord(), spec.VMID, g.node)
	}
	if spec.Node == "" {
		spec.Node = s.nodes[0].name
	}
	if s.node(spec.Node) == nil {
		return fmt.Errorf("guest %d: no node %q", spec.VMID, spec.Node)
	}
	g := newGuest(spec.Kind, spec.VMID, spec.Node)
	conf := map[string]string{}
	for k, v := range spec.Config {
		sv, ok := scalarString(v)
		if !ok {
			return fmt.Errorf("guest %d: config %s: want a scalar", spec.VMID, k)
		}
		conf[k] = sv
	}
	if spec.Name != "" {
		conf[g.nameKey()] = spec.Name
	}
	if err := s.initConfig(g, conf); err != nil {
		return fmt.Errorf("guest %d: %w", spec.VMID, err)
	}
	if spec.Template {
		g.config["template"] = "1"
	}
	s.guests[g.vmid] = g
	for _, sn := range spec.Snapshots {
		g.takeSnapshot(sn.Name, sn.Description, sn.VMState && g.kind == "qemu")
	}
	switch spec.Status {
	case "", "stopped":
	case "running":
		g.setRunning(time.Now())
	case "paused":
		g.setRunning(time.Now())
		g.paused = true
	default:
		return fmt.Errorf("guest %d: status %q: want stopped, running or paused", spec.VMID, spec.Status)
	}
	return nil
}

// SetGuestStatus changes a guest's run state directly ("running",
// "stopped" or "paused"), as if started or stopped outside the API.
func (s *Sim) SetGuestStatus(vmid int, status string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	g := s.guests[vmid]
	if g == nil {
		return fmt.Errorf("no guest %d", vmid)
	}
	switch status {
	case "running":
		if !g.running() {
			g.setRunning(time.Now())
		}
		g.paused = false
	case "paused":
		if !g.running() {
			g.setRunning(time.Now())
		}
		g.paused = true
	case "stopped":
		g.setStopped()
	default:
		return fmt.Errorf("status %q: want running, stopped or paused", status)
	}
	return nil
}

// DeleteGuest removes a guest and its volumes directly.
func (s *Sim) DeleteGuest(vmid int) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.guests[vmid] == nil {
		return fmt.Errorf("no guest %d", vmid)
	}
	s.destroyLocked(vmid, true)
	return nil
}

// SetConfig sets (value != "") or removes (value == "") a config key
// directly, e.g. SetConfig(100, "lock", "backup") or a new name.
func (s *Sim) SetConfig(vmid int, key, value string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	g := s.guests[vmid]
	if g == nil {
		return fmt.Errorf("no guest %d", vmid)
	}
	if key == "lock" {
		g.lock = value
		return nil
	}
	if value == "" {
		delete(g.config, key)
	} else {
		g.config[key] = value
	}
	return nil
}

// SetGuestIgnoresShutdown makes a running guest ignore ACPI/agent
// shutdown requests (a hung guest): shutdown then times out.
func (s *Sim) SetGuestIgnoresShutdown(vmid int, ignore bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	g := s.guests[vmid]
	if g == nil {
		return fmt.Errorf("no guest %d", vmid)
	}
	g.ignoreShutdown = ignore
	return nil
}

// MoveGuest moves a guest to another node directly (like a migration).
func (s *Sim) MoveGuest(vmid int, node string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	g := s.guests[vmid]
	if g == nil {
		return fmt.Errorf("no guest %d", vmid)
	}
	if s.node(node) == nil {
		return fmt.Errorf("no node %q", node)
	}
	g.node = node
	return nil
}

// GuestInfo is a copy of a guest's state.
type GuestInfo struct {
	VMID      int
	Kind      string // "qemu" or "lxc"
	Node      string
	Name      string
	Status    string // "running" or "stopped"
	Paused    bool
	Lock      string
	Template  bool
	Config    map[string]string
	Snapshots []string
}

// Guest returns a copy of one guest's state.
func (s *Sim) Guest(vmid int) (GuestInfo, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	g := s.guests[vmid]
	if g == nil {
		return GuestInfo{}, false
	}
	return g.info(), true
}

// Guests returns copies of all guests, by vmid.
func (s *Sim) Guests() []GuestInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]GuestInfo, 0, len(s.guests))
	for _, id := range s.vmids() {
		out = append(out, s.guests[id].info())
	}
	return out
}

func (s *Sim) vmids() []int {
	ids := make([]int, 0, len(s.guests))
	for id := range s.guests {
		ids = append(ids, id)
	}
	sort.Ints(ids)
	return ids
}

// AddVolume adds a volume (e.g. an ISO or a vztmpl) to a node's storage:
// volid "local:vztmpl/NAME.tar.zst", content "vztmpl", "iso" or "images".
func (s *Sim) AddVolume(node, volid, content string, size int64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := s.node(node)
	if n == nil {
		return fmt.Errorf("no node %q", node)
	}
	stID, _, ok := strings.Cut(volid, ":")
	st := n.storage(stID)
	if !ok || st == nil {
		return fmt.Errorf("volid %q: no storage %q on %s", volid, stID, node)
	}
	st.volumes[volid] = &volume{volid: volid, content: content, size: size, ctime: time.Now().Unix(), format: "raw"}
	return nil
}

// SetNodeOnline takes a node offline (its API paths answer 595, its
// guests show status "unknown") or back online.
func (s *Sim) SetNodeOnline(node string, online bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := s.node(node)
	if n == nil {
		return fmt.Errorf("no node %q", node)
	}
	if n.online != online {
		n.online = online
		n.since = time.Now()
	}
	return nil
}

// HangTasks makes tasks of the given type (e.g. "qmcreate"; "" = every
// type) never finish until they are stopped (DELETE on the task) or
// HangTasks(typ, false) releases them. The task's side effects that PVE
// makes before its worker runs (a created guest's "create" lock) are
// visible meanwhile.
func (s *Sim) HangTasks(taskType string, hang bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if hang {
		s.hang[taskType] = true
	} else {
		delete(s.hang, taskType)
		s.releaseHungLocked()
	}
}

// TaskInfo is a copy of a task's state.
type TaskInfo struct {
	UPID, Node, Type, ID, User string
	Running                    bool
	ExitStatus                 string
	Log                        []string
}

// Tasks returns copies of all tasks, oldest first.
func (s *Sim) Tasks() []TaskInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]TaskInfo, 0, len(s.tasks))
	for _, t := range s.tasks {
		out = append(out, TaskInfo{UPID: t.upid, Node: t.node, Type: t.typ, ID: t.id, User: t.user,
			Running: t.running, ExitStatus: t.exit, Log: append([]string(nil), t.log...)})
	}
	return out
}

// ---- counters ----

// stats are the usage numbers of a running guest at time now: they grow
// with the uptime so that rates computed from them are positive.
func (g *guest) stats(now time.Time) (cpu float64, mem, netin, netout, diskread, diskwrite int64, uptime int64) {
	if !g.running() {
		return 0, 0, 0, 0, 0, 0, 0
	}
	up := now.Sub(g.startedAt).Seconds()
	if up < 0 {
		up = 0
	}
	seed := float64(g.vmid%17) + 1
	cpu = 0.02 + 0.01*seed/17 + 0.01*math.Abs(math.Sin(up/7+seed))
	if g.paused {
		cpu = 0
	}
	mem = int64(float64(g.maxmem()) * (0.25 + 0.02*seed/17))
	netin = int64(up * (1500 + 30*seed))
	netout = int64(up * (800 + 20*seed))
	diskread = int64(up*(4096+100*seed)) + 50<<20
	diskwrite = int64(up * (2048 + 50*seed))
	return cpu, mem, netin, netout, diskread, diskwrite, int64(up)
}

func atoiDefault(s string, def int64) int64 {
	if v, err := strconv.ParseInt(s, 10, 64); err == nil {
		return v
	}
	return def
}
