package pvesim

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// hSnapshotList lists snapshots plus PVE's "current" pseudo-entry (the
// running state, whose parent is the newest snapshot).
func hSnapshotList(kind string) handlerFunc {
	return func(s *Sim, r *req) (any, map[string]any, error) {
		s.mu.Lock()
		defer s.mu.Unlock()
		g, err := s.guestLocked(kind, r.str("node"), vmidOf(r))
		if err != nil {
			return nil, nil, err
		}
		out := []any{}
		for _, sn := range g.snapshotOrder() {
			e := map[string]any{"name": sn.name, "description": sn.description, "snaptime": sn.snaptime}
			if sn.parent != "" {
				e["parent"] = sn.parent
			}
			if kind == "qemu" {
				e["vmstate"] = b2i(sn.vmstate)
			}
			out = append(out, e)
		}
		cur := map[string]any{"name": "current", "description": "You are here!", "digest": g.digest()}
		if kind == "qemu" {
			cur["running"] = b2i(g.running())
		}
		if p := g.config["parent"]; p != "" {
			cur["parent"] = p
		}
		out = append(out, cur)
		return out, nil, nil
	}
}

func hSnapshotConfig(kind string) handlerFunc {
	return func(s *Sim, r *req) (any, map[string]any, error) {
		s.mu.Lock()
		defer s.mu.Unlock()
		g, err := s.guestLocked(kind, r.str("node"), vmidOf(r))
		if err != nil {
			return nil, nil, err
		}
		sn := g.snapshots[r.str("snapname")]
		if sn == nil {
			return nil, nil, errf("snapshot '%s' does not exist", r.str("snapname"))
		}
		out := s.configMap(g, sn.config, false)
		out["snaptime"] = sn.snaptime
		if sn.description != "" {
			out["description"] = sn.description
		}
		if sn.parent != "" {
			out["parent"] = sn.parent
		}
		return out, nil, nil
	}
}

func hSnapshot(kind string) handlerFunc {
	return func(s *Sim, r *req) (any, map[string]any, error) {
		s.mu.Lock()
		defer s.mu.Unlock()
		node, vmid := r.str("node"), vmidOf(r)
		if _, err := s.guestLocked(kind, node, vmid); err != nil {
			return nil, nil, err
		}
		name := r.str("snapname")
		if name == "current" {
			return nil, nil, errf("unable to use snapshot name 'current' (reserved name)")
		}
		if kind == "qemu" && strings.EqualFold(name, "pending") {
			return nil, nil, errf("unable to use snapshot name 'pending' (reserved name)")
		}
		if kind == "lxc" && name == "vzdump" {
			return nil, nil, errf("unable to use snapshot name 'vzdump' (reserved name)")
		}
		desc, vmstate := r.str("description"), r.bool("vmstate")
		return s.spawnLocked(node, taskPrefix(kind)+"snapshot", strconv.Itoa(vmid), r.id.user, func(t *taskRun) error {
			// snapshot_prepare: under the config lock, check and lock.
			err := s.within(kind, node, vmid, func(g *guest) error {
				if err := g.lockError(); err != nil {
					return err
				}
				if g.snapshots[name] != nil {
					return errf("snapshot name '%s' already used", name)
				}
				g.lock = "snapshot"
				return nil
			})
			if err != nil {
				return err
			}
			var running bool
			_ = s.within(kind, node, vmid, func(g *guest) error { running = g.running(); return nil })
			if vmstate && running {
				t.logf("saving VM state and RAM using storage 'local-lvm'")
			}
			serr := t.sleep(s.opts.Delays.Snapshot)
			return s.within(kind, node, vmid, func(g *guest) error {
				g.lock = ""
				if serr != nil {
					return serr
				}
				g.takeSnapshot(name, desc, vmstate && running && kind == "qemu")
				return nil
			})
		}), nil, nil
	}
}

func hSnapshotDelete(kind string) handlerFunc {
	return func(s *Sim, r *req) (any, map[string]any, error) {
		s.mu.Lock()
		defer s.mu.Unlock()
		node, vmid := r.str("node"), vmidOf(r)
		if _, err := s.guestLocked(kind, node, vmid); err != nil {
			return nil, nil, err
		}
		name, force := r.str("snapname"), r.bool("force")
		return s.spawnLocked(node, taskPrefix(kind)+"delsnapshot", strconv.Itoa(vmid), r.id.user, func(t *taskRun) error {
			err := s.within(kind, node, vmid, func(g *guest) error {
				if g.snapshots[name] == nil {
					return errf("snapshot '%s' does not exist", name)
				}
				if !force {
					if err := g.lockError(); err != nil {
						return err
					}
				}
				g.lock = "snapshot-delete"
				return nil
			})
			if err != nil {
				return err
			}
			serr := t.sleep(s.opts.Delays.Snapshot)
			return s.within(kind, node, vmid, func(g *guest) error {
				if serr != nil {
					// An interrupted delete leaves the lock, as in PVE.
					return serr
				}
				g.lock = ""
				sn := g.snapshots[name]
				if sn == nil {
					return nil
				}
				for _, o := range g.snapshots {
					if o.parent == name {
						o.parent = sn.parent
					}
				}
				if g.config["parent"] == name {
					if sn.parent == "" {
						delete(g.config, "parent")
					} else {
						g.config["parent"] = sn.parent
					}
				}
				delete(g.snapshots, name)
				return nil
			})
		}), nil, nil
	}
}

func hRollback(kind string) handlerFunc {
	return func(s *Sim, r *req) (any, map[string]any, error) {
		s.mu.Lock()
		defer s.mu.Unlock()
		node, vmid := r.str("node"), vmidOf(r)
		if _, err := s.guestLocked(kind, node, vmid); err != nil {
			return nil, nil, err
		}
		name, start := r.str("snapname"), r.bool("start")
		return s.spawnLocked(node, taskPrefix(kind)+"rollback", strconv.Itoa(vmid), r.id.user, func(t *taskRun) error {
			err := s.within(kind, node, vmid, func(g *guest) error {
				if g.snapshots[name] == nil {
					return errf("snapshot '%s' does not exist", name)
				}
				if err := g.lockError(); err != nil {
					return err
				}
				g.lock = "rollback"
				if g.running() {
					// PVE stops the guest before rolling back.
					g.setStopped()
				}
				return nil
			})
			if err != nil {
				return err
			}
			serr := t.sleep(s.opts.Delays.Rollback)
			return s.within(kind, node, vmid, func(g *guest) error {
				if serr != nil {
					return serr
				}
				g.lock = ""
				sn := g.snapshots[name]
				if sn == nil {
					return errf("snapshot '%s' does not exist", name)
				}
				cfg := make(map[string]string, len(sn.config))
				for k, v := range sn.config {
					cfg[k] = v
				}
				cfg["parent"] = name
				g.config = cfg
				if (kind == "qemu" && sn.vmstate) || start {
					g.setRunning(time.Now())
				}
				return nil
			})
		}), nil, nil
	}
}

// hTemplate converts a stopped guest without snapshots into a template
// (QEMU: qmtemplate task; LXC: synchronous here, the schema returns null).
func hTemplate(kind string) handlerFunc {
	return func(s *Sim, r *req) (any, map[string]any, error) {
		s.mu.Lock()
		defer s.mu.Unlock()
		node, vmid := r.str("node"), vmidOf(r)
		g, err := s.guestLocked(kind, node, vmid)
		if err != nil {
			return nil, nil, err
		}
		word, vm := "VM", "a VM"
		if kind == "lxc" {
			word, vm = "CT", "a CT"
		}
		check := func(g *guest) error {
			if err := g.lockError(); err != nil {
				return err
			}
			if len(g.snapshots) > 0 {
				return errf("unable to create template, because %s contains snapshots", word)
			}
			if g.template() {
				return errf("you can't convert a template to a template")
			}
			if g.running() {
				if kind == "lxc" {
					return errf("you can't convert a CT to template if the CT is running")
				}
				return errf("you can't convert %s to template if VM is running", vm)
			}
			return nil
		}
		if err := check(g); err != nil {
			return nil, nil, err
		}
		convert := func(g *guest) {
			g.config["template"] = "1"
			// Disks become base volumes: vm-100-disk-0 -> base-100-disk-0.
			n := s.node(g.node)
			for _, k := range sortedKeys(g.config) {
				if !isDiskKey(g.kind, k) {
					continue
				}
				old, rest, _ := strings.Cut(g.config[k], ",")
				if !strings.Contains(old, ":vm-") {
					continue
				}
				nw := strings.Replace(old, ":vm-", ":base-", 1)
				if st := n.storage(strings.SplitN(old, ":", 2)[0]); st != nil && st.volumes[old] != nil {
					v := st.volumes[old]
					delete(st.volumes, old)
					v.volid = nw
					st.volumes[nw] = v
				}
				if rest != "" {
					nw += "," + rest
				}
				g.config[k] = nw
			}
		}
		if kind == "lxc" {
			convert(g)
			return nil, nil, nil
		}
		return s.spawnLocked(node, "qmtemplate", strconv.Itoa(vmid), r.id.user, func(t *taskRun) error {
			if err := t.sleep(s.opts.Delays.Config); err != nil {
				return err
			}
			return s.within(kind, node, vmid, func(g *guest) error {
				if err := check(g); err != nil {
					return err
				}
				convert(g)
				return nil
			})
		}), nil, nil
	}
}

// hClone clones a guest (full, or linked from a template) to newid,
// possibly on another node (target).
func hClone(kind string) handlerFunc {
	return func(s *Sim, r *req) (any, map[string]any, error) {
		s.mu.Lock()
		defer s.mu.Unlock()
		node, vmid := r.str("node"), vmidOf(r)
		g, err := s.guestLocked(kind, node, vmid)
		if err != nil {
			return nil, nil, err
		}
		newid := int(r.int("newid", 0))
		target := r.str("target")
		if target == "" || target == "localhost" {
			target = node
		}
		if s.node(target) == nil {
			return nil, nil, errf("no such cluster node '%s'", target)
		}
		if err := g.lockError(); err != nil {
			return nil, nil, err
		}
		snapname := r.str("snapname")
		if snapname != "" && g.snapshots[snapname] == nil {
			return nil, nil, errf("snapshot '%s' does not exist", snapname)
		}
		full := !g.template()
		if r.has("full") {
			full = r.bool("full")
		}
		storage := r.str("storage")
		if storage != "" && !full {
			return nil, nil, errf("parameter 'storage' not allowed for linked clones")
		}
		if r.has("format") && !full {
			return nil, nil, errf("parameter 'format' not allowed for linked clones")
		}
		if target != node {
			return nil, nil, errf("can't clone %s to node '%s' (%s uses local storage)", g.typeWord(), target, g.typeWord())
		}
		if s.guests[newid] != nil {
			if kind == "lxc" {
				return nil, nil, errf("unable to create CT %d: config file already exists", newid)
			}
			return nil, nil, errf("unable to create VM %d: config file already exists", newid)
		}
		if !full {
			for _, v := range g.volumes() {
				if !isBaseVolume(v) {
					if kind == "lxc" {
						return nil, nil, errf("Linked clone feature for '%s' is not available", v)
					}
					for _, k := range sortedKeys(g.config) {
						if strings.HasPrefix(g.config[k], v) {
							return nil, nil, errf("Linked clone feature is not supported for '%s' (%s)", v, k)
						}
					}
				}
			}
		}
		if kind == "lxc" && full && g.running() && snapname == "" {
			return nil, nil, errf("Full clone of a running container is only possible from a snapshot")
		}
		src := g.config
		if snapname != "" {
			src = g.snapshots[snapname].config
		}
		// The clone exists (locked) from the start, as with
		// create_and_lock_config; the source is locked while a running VM
		// is copied.
		ng := newGuest(kind, newid, target)
		ng.lock = "clone"
		if kind == "lxc" {
			ng.lock = "create"
		}
		s.guests[newid] = ng
		srcLocked := g.running()
		if srcLocked {
			g.lock = "clone"
		}
		name := r.str("name")
		if kind == "lxc" {
			name = r.str("hostname")
		}
		desc := r.str("description")
		cfg := make(map[string]string, len(src))
		for k, v := range src {
			cfg[k] = v
		}
		return s.spawnLocked(node, taskPrefix(kind)+"clone", strconv.Itoa(vmid), r.id.user, func(t *taskRun) error {
			serr := t.sleep(s.opts.Delays.Clone)
			s.mu.Lock()
			defer s.mu.Unlock()
			if srcLocked {
				if sg := s.guests[vmid]; sg != nil && sg.lock == "clone" {
					sg.lock = ""
				}
			}
			if s.guests[newid] != ng {
				return errf("clone failed: config file vanished")
			}
			if serr != nil {
				s.destroyLocked(newid, true)
				return fmt.Errorf("clone failed: %v", serr)
			}
			n := s.node(target)
			idx := 0
			for _, k := range sortedKeys(cfg) {
				v := cfg[k]
				switch {
				case k == "parent" || k == "snaptime" || k == "vmstate" || k == "template" || k == "lock" || strings.HasPrefix(k, "unused"):
					continue
				case k == "smbios1":
					ng.config[k] = "uuid=" + uuid()
				case k == "vmgenid":
					ng.config[k] = uuid()
				case strings.HasPrefix(k, "net") && reIndexed(k):
					ng.config[k] = newMAC(kind, v)
				case isDiskKey(kind, k) && !strings.Contains(v, "media=cdrom"):
					vol, rest, _ := strings.Cut(v, ",")
					stID, _, _ := strings.Cut(vol, ":")
					if full && storage != "" {
						stID = storage
					}
					st := n.storage(stID)
					if st == nil {
						s.destroyLocked(newid, true)
						return errf("clone failed: storage '%s' does not exist", stID)
					}
					size := volSize(v)
					var nv string
					for {
						nv = fmt.Sprintf("%s:vm-%d-disk-%d", st.id, newid, idx)
						idx++
						if st.volumes[nv] == nil {
							break
						}
					}
					if !full {
						nv = vol + "/" + strings.TrimPrefix(nv, st.id+":")
						nv = st.id + ":" + strings.TrimPrefix(nv, st.id+":")
					}
					st.volumes[nv] = &volume{volid: nv, content: "images", format: "raw", size: size, vmid: newid, ctime: time.Now().Unix()}
					if rest != "" {
						nv += "," + rest
					}
					ng.config[k] = nv
					t.logfLocked("create %s clone of drive %s (%s)", map[bool]string{true: "full", false: "linked"}[full], k, vol)
				default:
					ng.config[k] = v
				}
			}
			if name != "" {
				ng.config[ng.nameKey()] = name
			} else if kind == "qemu" {
				// qemu-server: "Copy-of-VM-" . ($oldconf->{name} // $vmid)
				old := cfg["name"]
				if old == "" {
					old = strconv.Itoa(vmid)
				}
				ng.config["name"] = "Copy-of-VM-" + old
			}
			if desc != "" {
				ng.config["description"] = desc
			}
			ng.lock = ""
			return nil
		}), nil, nil
	}
}

func newMAC(kind, v string) string {
	parts := strings.Split(v, ",")
	for i, p := range parts {
		k, _, ok := strings.Cut(p, "=")
		if !ok {
			continue
		}
		if kind == "lxc" && k == "hwaddr" {
			parts[i] = "hwaddr=" + randMAC()
		}
		if kind == "qemu" && (k == "virtio" || k == "e1000" || k == "e1000e" || k == "rtl8139" || k == "vmxnet3") {
			parts[i] = k + "=" + randMAC()
		}
	}
	return strings.Join(parts, ",")
}

// hRRDData returns a few synthetic samples (one per minute for the
// hour timeframe) of the guest's usage.
func hRRDData(kind string) handlerFunc {
	return func(s *Sim, r *req) (any, map[string]any, error) {
		s.mu.Lock()
		defer s.mu.Unlock()
		g, err := s.guestLocked(kind, r.str("node"), vmidOf(r))
		if err != nil {
			return nil, nil, err
		}
		now := time.Now()
		step := map[string]time.Duration{"hour": time.Minute, "day": 30 * time.Minute, "week": 3 * time.Hour,
			"month": 12 * time.Hour, "year": 7 * 24 * time.Hour, "decade": 70 * 24 * time.Hour}[r.str("timeframe")]
		out := []any{}
		for i := 69; i >= 0; i-- {
			at := now.Add(-time.Duration(i) * step).Truncate(step)
			e := map[string]any{"time": at.Unix(), "maxcpu": g.cores(), "maxmem": g.maxmem(), "maxdisk": g.maxdisk()}
			if g.running() && at.After(g.startedAt) {
				cpu, mem, _, _, _, _, _ := g.stats(at)
				e["cpu"], e["mem"] = cpu, mem
				e["netin"], e["netout"], e["diskread"], e["diskwrite"] = 1500.0, 800.0, 4096.0, 2048.0
			}
			out = append(out, e)
		}
		return out, nil, nil
	}
}

// isBaseVolume reports whether a volid names a template's base volume
// ("local-lvm:base-100-disk-0"; a linked clone's
// "local-lvm:base-100-disk-0/vm-101-disk-0" is not one).
func isBaseVolume(volid string) bool {
	_, name, _ := strings.Cut(volid, ":")
	return strings.HasPrefix(name[strings.LastIndexByte(name, '/')+1:], "base-")
}
