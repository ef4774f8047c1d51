package pvesim

import (
	"crypto/sha1"
	"encoding/hex"
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
)

type guest struct {
	kind           string // "qemu" | "lxc"
	vmid           int
	node           string
	config         map[string]string
	lock           string
	startedAt      time.Time
	isRunning      bool
	paused         bool
	ignoreShutdown bool
	snapshots      map[string]*snapshot
	execs          map[int]*agentExec
	execPID        int
}

type snapshot struct {
	name, description, parent string
	snaptime                  int64
	vmstate                   bool
	config                    map[string]string
	running                   bool
}

func newGuest(kind string, vmid int, node string) *guest {
	return &guest{kind: kind, vmid: vmid, node: node, config: map[string]string{},
		snapshots: map[string]*snapshot{}, execs: map[int]*agentExec{}, execPID: 1000}
}

func (g *guest) running() bool { return g.isRunning }

func (g *guest) setRunning(now time.Time) {
	g.isRunning = true
	g.paused = false
	g.startedAt = now
}

func (g *guest) setStopped() {
	g.isRunning = false
	g.paused = false
	g.execs = map[int]*agentExec{}
}

// typeWord is PVE's guest_type(): "VM" for QEMU, "CT" for LXC.
func (g *guest) typeWord() string {
	if g.kind == "lxc" {
		return "CT"
	}
	return "VM"
}

func (g *guest) nameKey() string {
	if g.kind == "lxc" {
		return "hostname"
	}
	return "name"
}

func (g *guest) name() string {
	if n := g.config[g.nameKey()]; n != "" {
		return n
	}
	if g.kind == "lxc" {
		return fmt.Sprintf("CT%d", g.vmid)
	}
	return fmt.Sprintf("VM %d", g.vmid)
}

func (g *guest) template() bool { return g.config["template"] == "1" }

// configPath is the cluster filesystem path PVE names in its
// "does not exist" errors.
func configPath(kind, node string, vmid int) string {
	if kind == "lxc" {
		return fmt.Sprintf("nodes/%s/lxc/%d.conf", node, vmid)
	}
	return fmt.Sprintf("nodes/%s/qemu-server/%d.conf", node, vmid)
}

// lockError is AbstractConfig.pm check_lock's message.
func (g *guest) lockError() error {
	if g.lock == "" {
		return nil
	}
	return fmt.Errorf("%s is locked (%s)", g.typeWord(), g.lock)
}

func (g *guest) cores() int64 {
	c := atoiDefault(g.config["cores"], 1)
	if g.kind == "qemu" {
		c *= atoiDefault(g.config["sockets"], 1)
	}
	return c
}

// memoryMiB parses "2048" or "current=2048".
func (g *guest) memoryMiB() int64 {
	m := g.config["memory"]
	for _, part := range strings.Split(m, ",") {
		part = strings.TrimPrefix(part, "current=")
		if v, err := strconv.ParseInt(part, 10, 64); err == nil {
			return v
		}
	}
	return 512
}

func (g *guest) maxmem() int64 { return g.memoryMiB() << 20 }

var diskKey = regexp.MustCompile(`^(ide|sata|scsi|virtio|efidisk|tpmstate|rootfs|mp|unused)\d*$`)

func isDiskKey(kind, k string) bool {
	if !diskKey.MatchString(k) {
		return false
	}
	if kind == "lxc" {
		return k == "rootfs" || strings.HasPrefix(k, "mp")
	}
	return k != "rootfs" && !strings.HasPrefix(k, "mp")
}

// volumes lists the volids of the guest's disks (cdroms excluded).
func (g *guest) volumes() []string {
	var out []string
	for _, k := range sortedKeys(g.config) {
		if !isDiskKey(g.kind, k) {
			continue
		}
		v := g.config[k]
		if strings.Contains(v, "media=cdrom") {
			continue
		}
		file, _, _ := strings.Cut(v, ",")
		file = strings.TrimPrefix(strings.TrimPrefix(file, "file="), "volume=")
		if file != "" && file != "none" && strings.Contains(file, ":") {
			out = append(out, file)
		}
	}
	return out
}

func (g *guest) maxdisk() int64 {
	var total int64
	for _, k := range sortedKeys(g.config) {
		if !isDiskKey(g.kind, k) || strings.HasPrefix(k, "unused") {
			continue
		}
		if g.kind == "qemu" && k != "scsi0" && k != "virtio0" && k != "sata0" && k != "ide0" {
			continue
		}
		if m := sizeOpt.FindStringSubmatch(g.config[k]); m != nil {
			total += parseSize(m[1])
		}
		if g.kind == "lxc" {
			break
		}
	}
	return total
}

// volSize is the size= option of a disk string in bytes (0 if absent).
func volSize(v string) int64 {
	if m := sizeOpt.FindStringSubmatch(v); m != nil {
		return parseSize(m[1])
	}
	return 0
}

var sizeOpt = regexp.MustCompile(`(?:^|,)size=(\d+[KMGT]?)`)

func parseSize(s string) int64 {
	mult := int64(1)
	switch {
	case strings.HasSuffix(s, "K"):
		mult = 1 << 10
	case strings.HasSuffix(s, "M"):
		mult = 1 << 20
	case strings.HasSuffix(s, "G"):
		mult = 1 << 30
	case strings.HasSuffix(s, "T"):
		mult = 1 << 40
	}
	v, _ := strconv.ParseInt(strings.TrimRight(s, "KMGT"), 10, 64)
	return v * mult
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// digest is the config digest PVE returns with GET config (SHA-1 of the
// config file).
func (g *guest) digest() string {
	h := sha1.New()
	for _, k := range sortedKeys(g.config) {
		fmt.Fprintf(h, "%s: %s\n", k, g.config[k])
	}
	return hex.EncodeToString(h.Sum(nil))
}

func (g *guest) info() GuestInfo {
	cfg := make(map[string]string, len(g.config))
	for k, v := range g.config {
		cfg[k] = v
	}
	var snaps []string
	for _, sn := range g.snapshotOrder() {
		snaps = append(snaps, sn.name)
	}
	st := "stopped"
	if g.running() {
		st = "running"
	}
	return GuestInfo{VMID: g.vmid, Kind: g.kind, Node: g.node, Name: g.config[g.nameKey()], Status: st,
		Paused: g.paused, Lock: g.lock, Template: g.template(), Config: cfg, Snapshots: snaps}
}

func (g *guest) snapshotOrder() []*snapshot {
	out := make([]*snapshot, 0, len(g.snapshots))
	for _, sn := range g.snapshots {
		out = append(out, sn)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].snaptime != out[j].snaptime {
			return out[i].snaptime < out[j].snaptime
		}
		return out[i].name < out[j].name
	})
	return out
}

func (g *guest) takeSnapshot(name, description string, vmstate bool) {
	cfg := make(map[string]string, len(g.config))
	for k, v := range g.config {
		if k != "parent" {
			cfg[k] = v
		}
	}
	// snaptime must order snapshots taken within one second too.
	t := time.Now().Unix()
	for _, sn := range g.snapshots {
		if sn.snaptime >= t {
			t = sn.snaptime + 1
		}
	}
	g.snapshots[name] = &snapshot{name: name, description: description, parent: g.config["parent"],
		snaptime: t, vmstate: vmstate, config: cfg, running: g.running()}
	g.config["parent"] = name
}

// initConfig fills a new guest's config from create parameters: PVE's
// defaults and generated keys, disks "STORAGE:SIZE" allocated, MACs added.
func (s *Sim) initConfig(g *guest, params map[string]string) error {
	n := s.node(g.node)
	now := time.Now().Unix()
	if g.kind == "qemu" {
		g.config["smbios1"] = "uuid=" + uuid()
		g.config["vmgenid"] = uuid()
		g.config["meta"] = fmt.Sprintf("creation-qemu=9.2.0,ctime=%d", now)
	} else {
		g.config["arch"] = "amd64"
		g.config["memory"] = "512"
		g.config["swap"] = "512"
	}
	diskIdx := 0
	for _, k := range sortedKeys(params) {
		v := params[k]
		switch {
		case isDiskKey(g.kind, k):
			alloc, err := s.allocDisk(n, g, k, v, &diskIdx)
			if err != nil {
				return err
			}
			g.config[k] = alloc
		case strings.HasPrefix(k, "net") && reIndexed(k):
			g.config[k] = addMAC(g.kind, v)
		default:
			g.config[k] = v
		}
	}
	if g.kind == "lxc" {
		if _, ok := g.config["ostype"]; !ok {
			g.config["ostype"] = ostypeFromTemplate(g.config["ostemplate"])
		}
		delete(g.config, "ostemplate")
	}
	return nil
}

var reIdx = regexp.MustCompile(`^[a-z]+\d+$`)

func reIndexed(k string) bool { return reIdx.MatchString(k) }

func ostypeFromTemplate(t string) string {
	base := t[strings.LastIndexByte(t, '/')+1:]
	for _, os := range []string{"debian", "ubuntu", "alpine", "centos", "fedora", "archlinux", "rockylinux", "almalinux"} {
		if strings.HasPrefix(base, os) {
			return os
		}
	}
	return "unmanaged"
}

// addMAC adds a generated MAC address to a net[n] string that has none,
// as PVE does: "virtio,bridge=vmbr0" -> "virtio=BC:24:11:..,bridge=vmbr0"
// (QEMU) and "name=eth0,bridge=vmbr0" -> "...,hwaddr=BC:24:11:.." (LXC).
func addMAC(kind, v string) string {
	parts := strings.Split(v, ",")
	if kind == "lxc" {
		for _, p := range parts {
			if strings.HasPrefix(p, "hwaddr=") {
				return v
			}
		}
		return v + ",hwaddr=" + randMAC()
	}
	models := map[string]bool{"virtio": true, "e1000": true, "e1000e": true, "rtl8139": true, "vmxnet3": true}
	for i, p := range parts {
		k, val, hasVal := strings.Cut(p, "=")
		if models[k] && (!hasVal || val == "") {
			parts[i] = k + "=" + randMAC()
			return strings.Join(parts, ",")
		}
		if k == "model" {
			parts[i] = val + "=" + randMAC()
			return strings.Join(parts, ",")
		}
		if models[k] {
			return v
		}
	}
	return v
}

var allocSpec = regexp.MustCompile(`^(?:file=|volume=)?([a-zA-Z][a-zA-Z0-9._-]*):(\d+(?:\.\d+)?)((?:,.*)?)$`)

// allocDisk turns "local-lvm:8,ssd=1" into "local-lvm:vm-101-disk-0,ssd=1,size=8G"
// and records the volume; other values (existing volumes, cdroms, none)
// are kept.
func (s *Sim) allocDisk(n *simNode, g *guest, key, v string, idx *int) (string, error) {
	m := allocSpec.FindStringSubmatch(v)
	if m == nil {
		return v, nil
	}
	st := n.storage(m[1])
	if err := checkDiskStorage(n, g.kind, m[1]); err != nil {
		return "", err
	}
	sizeG, _ := strconv.ParseFloat(m[2], 64)
	kind := "disk"
	if key == "efidisk0" || key == "tpmstate0" {
		sizeG = 0.004
	}
	var volid string
	for {
		if g.kind == "lxc" {
			volid = fmt.Sprintf("%s:vm-%d-disk-%d", st.id, g.vmid, *idx)
		} else {
			volid = fmt.Sprintf("%s:vm-%d-%s-%d", st.id, g.vmid, kind, *idx)
		}
		*idx++
		if st.volumes[volid] == nil {
			break
		}
	}
	size := int64(sizeG * (1 << 30))
	st.volumes[volid] = &volume{volid: volid, content: "images", format: "raw", size: size, vmid: g.vmid, ctime: time.Now().Unix()}
	sizeStr := fmt.Sprintf("%dG", int64(sizeG))
	if sizeG < 1 {
		sizeStr = fmt.Sprintf("%dM", size>>20)
	}
	return volid + m[3] + ",size=" + sizeStr, nil
}

// freeVolumes removes the guest's volumes from storage (all volumes
// owned by the vmid when unreferenced is set).
func (s *Sim) freeVolumes(g *guest, unreferenced bool) {
	n := s.node(g.node)
	if n == nil {
		return
	}
	refs := map[string]bool{}
	for _, v := range g.volumes() {
		refs[v] = true
	}
	for _, st := range n.storages {
		for id, vol := range st.volumes {
			if refs[id] || (unreferenced && vol.vmid == g.vmid) {
				delete(st.volumes, id)
			}
		}
	}
}

func (s *Sim) destroyLocked(vmid int, unreferenced bool) {
	g := s.guests[vmid]
	if g == nil {
		return
	}
	s.freeVolumes(g, unreferenced)
	delete(s.guests, vmid)
}

func uuid() string {
	h := randHex(16)
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

// checkDiskStorage is PVE's storage check for a new disk: the storage
// must exist (500) and hold guest disks (a parameter error on storage).
func checkDiskStorage(n *simNode, kind, id string) error {
	st := n.storage(id)
	if st == nil {
		return errf("storage '%s' does not exist", id)
	}
	if kind == "lxc" && !strings.Contains(st.content, "rootdir") {
		return paramError(map[string]string{"storage": fmt.Sprintf("storage '%s' does not support container directories", id)})
	}
	if kind == "qemu" && !strings.Contains(st.content, "images") {
		return paramError(map[string]string{"storage": fmt.Sprintf("storage '%s' does not support vm images", id)})
	}
	return nil
}

// checkNewDisks runs checkDiskStorage for every disk to allocate in conf,
// as PVE does before it forks the worker.
func (s *Sim) checkNewDisks(node, kind string, conf map[string]string) error {
	n := s.node(node)
	for _, k := range sortedKeys(conf) {
		if !isDiskKey(kind, k) {
			continue
		}
		if m := allocSpec.FindStringSubmatch(conf[k]); m != nil {
			if err := checkDiskStorage(n, kind, m[1]); err != nil {
				return err
			}
		}
	}
	return nil
}
