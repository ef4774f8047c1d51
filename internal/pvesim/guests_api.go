package pvesim

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"
)

// guestLocked finds the guest kind/vmid on node; a missing guest is PVE's
// "Configuration file ... does not exist" (500). The caller holds s.mu.
func (s *Sim) guestLocked(kind, node string, vmid int) (*guest, error) {
	g := s.guests[vmid]
	if g == nil || g.node != node || g.kind != kind {
		return nil, errf("Configuration file '%s' does not exist", configPath(kind, node, vmid))
	}
	return g, nil
}

func vmidOf(r *req) int { return int(r.int("vmid", 0)) }

// taskPrefix is the task type prefix: qm (QEMU) or vz (LXC).
func taskPrefix(kind string) string {
	if kind == "lxc" {
		return "vz"
	}
	return "qm"
}

// within runs fn on the guest under s.mu after a task step; a guest that
// vanished meanwhile is the usual "does not exist" error.
func (s *Sim) within(kind, node string, vmid int, fn func(g *guest) error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	g, err := s.guestLocked(kind, node, vmid)
	if err != nil {
		return err
	}
	return fn(g)
}

func (s *Sim) guestSummary(g *guest, now time.Time) map[string]any {
	cpu, mem, netin, netout, dr, dw, up := g.stats(now)
	st := "stopped"
	if g.running() {
		st = "running"
	}
	e := map[string]any{"vmid": g.vmid, "name": g.name(), "status": st, "cpu": cpu, "cpus": g.cores(),
		"template": b2i(g.template()),
		"mem":      mem, "maxmem": g.maxmem(), "disk": int64(0), "maxdisk": g.maxdisk(), "netin": netin, "netout": netout,
		"diskread": dr, "diskwrite": dw, "uptime": up}
	if g.kind == "lxc" {
		e["type"] = "lxc"
		e["maxswap"] = atoiDefault(g.config["swap"], 512) << 20
		e["swap"] = int64(0)
		if g.running() {
			e["disk"] = g.maxdisk() / 10
		}
	} else {
		if g.running() {
			e["pid"] = 10000 + g.vmid%50000
			e["qmpstatus"] = "running"
			if g.paused {
				e["qmpstatus"] = "paused"
			}
		}
	}
	if t := g.config["tags"]; t != "" {
		e["tags"] = t
	}
	if g.lock != "" {
		e["lock"] = g.lock
	}
	return e
}

func guestList(kind string) handlerFunc {
	return func(s *Sim, r *req) (any, map[string]any, error) {
		s.mu.Lock()
		defer s.mu.Unlock()
		node := r.str("node")
		now := time.Now()
		out := []any{}
		for _, id := range s.vmids() {
			g := s.guests[id]
			if g.node == node && g.kind == kind {
				out = append(out, s.guestSummary(g, now))
			}
		}
		return out, nil, nil
	}
}

func hCurrent(kind string) handlerFunc {
	return func(s *Sim, r *req) (any, map[string]any, error) {
		s.mu.Lock()
		defer s.mu.Unlock()
		g, err := s.guestLocked(kind, r.str("node"), vmidOf(r))
		if err != nil {
			return nil, nil, err
		}
		e := s.guestSummary(g, time.Now())
		e["ha"] = map[string]any{"managed": 0}
		if kind == "qemu" {
			_, hasAgent := g.config["agent"]
			e["agent"] = b2i(hasAgent && agentEnabled(g.config["agent"]))
			if g.running() {
				e["running-machine"] = "pc-i440fx-9.2+pve1"
				e["running-qemu"] = "9.2.0"
			}
			e["serial"] = 0
			e["clipboard"] = nil
			delete(e, "clipboard")
		}
		return e, nil, nil
	}
}

// configValue renders a config value with the JSON type the schema gives
// it (integers and booleans as numbers, the rest as strings).
func (s *Sim) configValue(kind, key, val string) any {
	var props map[string]*Prop
	if s.schema != nil {
		if m := s.schema.find("/nodes/{node}/" + kind + "/{vmid}/config"); m != nil && m.Info["GET"] != nil && m.Info["GET"].Returns != nil {
			props = m.Info["GET"].Returns.Properties
		}
	}
	if props == nil {
		if kind == "lxc" {
			props = lxcConfigProps()
		} else {
			props = qemuConfigProps()
		}
	}
	p := propFor(props, key)
	if p == nil {
		return val
	}
	switch p.Type() {
	case "integer", "boolean":
		if v, err := strconv.ParseInt(val, 10, 64); err == nil {
			return v
		}
	case "number":
		if v, err := strconv.ParseFloat(val, 64); err == nil {
			return v
		}
	}
	return val
}

func (s *Sim) configMap(g *guest, cfg map[string]string, withDigest bool) map[string]any {
	out := map[string]any{}
	for k, v := range cfg {
		out[k] = s.configValue(g.kind, k, v)
	}
	if withDigest {
		out["digest"] = g.digest()
		if g.lock != "" {
			out["lock"] = g.lock
		}
	}
	return out
}

func hConfigGet(kind string) handlerFunc {
	return func(s *Sim, r *req) (any, map[string]any, error) {
		s.mu.Lock()
		defer s.mu.Unlock()
		g, err := s.guestLocked(kind, r.str("node"), vmidOf(r))
		if err != nil {
			return nil, nil, err
		}
		if name := r.str("snapshot"); name != "" {
			sn := g.snapshots[name]
			if sn == nil {
				return nil, nil, errf("snapshot '%s' does not exist", name)
			}
			return s.configMap(g, sn.config, false), nil, nil
		}
		return s.configMap(g, g.config, true), nil, nil
	}
}

// nonConfigParams are create/update parameters that are not config keys.
var nonConfigParams = map[string]bool{"node": true, "vmid": true, "start": true, "pool": true, "storage": true,
	"unique": true, "archive": true, "force": true, "live-restore": true, "delete": true, "digest": true,
	"revert": true, "skiplock": true, "background_delay": true, "ostemplate": true, "password": true,
	"ssh-public-keys": true, "restore": true, "ignore-unpack-errors": true}

func configParams(r *req) map[string]string {
	out := map[string]string{}
	for k := range r.params {
		if !nonConfigParams[k] {
			out[k] = r.str(k)
		}
	}
	if t, ok := out["tags"]; ok {
		out["tags"] = normalizeTags(t)
	}
	return out
}

// normalizeTags is PVE's get_unique_tags: split on ';', ',' or space,
// unique, sorted, joined with ';'.
func normalizeTags(t string) string {
	seen := map[string]bool{}
	var tags []string
	for _, x := range strings.FieldsFunc(t, func(r rune) bool { return r == ';' || r == ',' || r == ' ' }) {
		if !seen[x] {
			seen[x] = true
			tags = append(tags, x)
		}
	}
	sort.Strings(tags)
	return strings.Join(tags, ";")
}

func defaultBoot(cfg map[string]string) string {
	var disks, cds, nets []string
	for _, k := range sortedKeys(cfg) {
		switch {
		case isDiskKey("qemu", k) && !strings.HasPrefix(k, "unused") && k != "efidisk0" && k != "tpmstate0":
			if strings.Contains(cfg[k], "media=cdrom") {
				cds = append(cds, k)
			} else {
				disks = append(disks, k)
			}
		case strings.HasPrefix(k, "net") && reIndexed(k):
			nets = append(nets, k)
		}
	}
	var order []string
	if len(disks) > 0 {
		order = append(order, disks[0])
	}
	order = append(append(order, cds...), nets...)
	return "order=" + strings.Join(order, ";")
}

func hCreate(kind string) handlerFunc {
	return func(s *Sim, r *req) (any, map[string]any, error) {
		s.mu.Lock()
		defer s.mu.Unlock()
		node, vmid := r.str("node"), vmidOf(r)
		word := "VM"
		if kind == "lxc" {
			word = "CT"
		}
		emsg := fmt.Sprintf("unable to create %s %d -", word, vmid)
		if g := s.guests[vmid]; g != nil {
			if kind == "lxc" {
				// pve-container calls check_vmid_unused before its eval.
				return nil, nil, errf("%s %d already exists on node '%s'", g.typeWord(), vmid, g.node)
			}
			return nil, nil, errf("%s %s %d already exists on node '%s'", emsg, g.typeWord(), vmid, g.node)
		}
		conf := configParams(r)
		g := newGuest(kind, vmid, node)
		if kind == "lxc" {
			tmpl := r.str("ostemplate")
			conf["ostemplate"] = tmpl
			if _, ok := conf["rootfs"]; !ok {
				st := r.str("storage")
				if st == "" {
					st = "local"
				}
				conf["rootfs"] = st + ":4"
			}
		} else if r.str("storage") != "" {
			for k, v := range conf {
				if isDiskKey("qemu", k) && reInteger.MatchString(v) {
					conf[k] = r.str("storage") + ":" + v
				}
			}
		}
		if err := s.checkNewDisks(node, kind, conf); err != nil {
			return nil, nil, err
		}
		// create_and_lock_config: the guest exists, locked, from now on.
		g.lock = "create"
		s.guests[vmid] = g
		start := r.bool("start")
		tmplVol := conf["ostemplate"]
		upid := s.spawnLocked(node, taskPrefix(kind)+"create", strconv.Itoa(vmid), r.id.user, func(t *taskRun) error {
			fail := func(err error) error {
				s.mu.Lock()
				if cur := s.guests[vmid]; cur == g {
					s.destroyLocked(vmid, true)
				}
				s.mu.Unlock()
				return fmt.Errorf("%s %v", emsg, err)
			}
			if kind == "lxc" {
				t.logf("extracting archive '%s'", strings.TrimPrefix(tmplVol, "local:"))
				s.mu.Lock()
				ok := s.volumeExists(node, tmplVol)
				s.mu.Unlock()
				if !ok {
					return fail(fmt.Errorf("volume '%s' does not exist", tmplVol))
				}
			}
			if err := t.sleep(s.opts.Delays.Create); err != nil {
				return fail(err)
			}
			s.mu.Lock()
			if s.guests[vmid] != g {
				s.mu.Unlock()
				return fmt.Errorf("%s config file vanished", emsg)
			}
			err := s.initConfig(g, conf)
			if err == nil && kind == "qemu" && g.config["boot"] == "" {
				g.config["boot"] = defaultBoot(g.config)
			}
			if err != nil {
				s.mu.Unlock()
				return fail(err)
			}
			for _, v := range g.volumes() {
				t.logfLocked("  volume '%s' allocated", v)
			}
			g.lock = ""
			if start {
				// PVE starts the guest in a task of its own.
				t.logfLocked("Execute autostart")
				s.spawnLocked(node, taskPrefix(kind)+"start", strconv.Itoa(vmid), r.id.user, s.startWorker(kind, node, vmid, false))
			}
			s.mu.Unlock()
			return nil
		})
		return upid, nil, nil
	}
}

func (s *Sim) volumeExists(node, volid string) bool {
	n := s.node(node)
	stID, _, ok := strings.Cut(volid, ":")
	if n == nil || !ok || n.storage(stID) == nil {
		return false
	}
	return n.storage(stID).volumes[volid] != nil
}

func (s *Sim) applyConfig(g *guest, r *req) error {
	if d := r.str("digest"); d != "" && d != g.digest() {
		return errf("detected modified configuration - file changed by other user? Try again.")
	}
	conf := configParams(r)
	for _, k := range strings.FieldsFunc(r.str("delete"), func(r rune) bool { return r == ',' || r == ';' || r == ' ' }) {
		if _, set := conf[k]; set {
			return paramError(map[string]string{k: "conflict with 'delete' parameter"})
		}
		if isDiskKey(g.kind, k) && !strings.HasPrefix(k, "unused") {
			if v := g.config[k]; v != "" && !strings.Contains(v, "media=cdrom") {
				// A detached disk becomes unusedN, as in PVE.
				vol, _, _ := strings.Cut(v, ",")
				for i := 0; ; i++ {
					u := fmt.Sprintf("unused%d", i)
					if _, used := g.config[u]; !used {
						g.config[u] = vol
						break
					}
				}
			}
		}
		delete(g.config, k)
	}
	idx := len(g.volumes())
	n := s.node(g.node)
	for _, k := range sortedKeys(conf) {
		v := conf[k]
		switch {
		case isDiskKey(g.kind, k):
			alloc, err := s.allocDisk(n, g, k, v, &idx)
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
	return nil
}

// hConfigSet is POST (async, qmconfig task) or PUT (sync) config.
func hConfigSet(kind string, async bool) handlerFunc {
	return func(s *Sim, r *req) (any, map[string]any, error) {
		s.mu.Lock()
		defer s.mu.Unlock()
		node, vmid := r.str("node"), vmidOf(r)
		g, err := s.guestLocked(kind, node, vmid)
		if err != nil {
			return nil, nil, err
		}
		if len(configParams(r)) == 0 && r.str("delete") == "" && r.str("revert") == "" {
			return nil, nil, errf("no options specified")
		}
		if err := s.checkNewDisks(node, kind, configParams(r)); err != nil {
			return nil, nil, err
		}
		skiplock := r.bool("skiplock")
		if !async {
			// PUT holds the config file lock too: wait for it without s.mu.
			s.mu.Unlock()
			unlock, err := s.flock(kind, vmid, nil, r.ctx.Done())
			s.mu.Lock()
			if err != nil {
				return nil, nil, err
			}
			defer unlock()
			if g, err = s.guestLocked(kind, node, vmid); err != nil {
				return nil, nil, err
			}
			if !skiplock {
				if err := g.lockError(); err != nil {
					return nil, nil, err
				}
			}
			return nil, nil, s.applyConfig(g, r)
		}
		upid := s.spawnLocked(node, "qmconfig", strconv.Itoa(vmid), r.id.user, func(t *taskRun) error {
			if err := t.sleep(s.opts.Delays.Config); err != nil {
				return err
			}
			return s.within(kind, node, vmid, func(g *guest) error {
				if !skiplock {
					if err := g.lockError(); err != nil {
						return err
					}
				}
				return s.applyConfig(g, r)
			})
		})
		if d := r.int("background_delay", 0); d > 0 {
			// Wait up to d seconds: a task done by then answers null,
			// or its error; else the UPID (API2/Qemu.pm).
			t := s.taskIdx[upid]
			s.mu.Unlock()
			deadline := time.Now().Add(time.Duration(d) * time.Second)
			for time.Now().Before(deadline) && s.taskRunning(t) {
				time.Sleep(20 * time.Millisecond)
			}
			s.mu.Lock()
			if !t.running {
				if t.exit == "OK" || strings.HasPrefix(t.exit, "WARNINGS") {
					return nil, nil, nil
				}
				return nil, nil, errf("failed to update VM %d: %s", vmid, t.exit)
			}
		}
		return upid, nil, nil
	}
}

func (s *Sim) taskRunning(t *task) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return t.running
}

func hDestroy(kind string) handlerFunc {
	return func(s *Sim, r *req) (any, map[string]any, error) {
		s.mu.Lock()
		defer s.mu.Unlock()
		node, vmid := r.str("node"), vmidOf(r)
		g, err := s.guestLocked(kind, node, vmid)
		if err != nil {
			return nil, nil, err
		}
		force := kind == "lxc" && r.bool("force")
		early := func(g *guest) error {
			if g.config["protection"] == "1" {
				return errf("can't remove %s %d - protection mode enabled", g.typeWord(), vmid)
			}
			if g.running() && !force {
				if kind == "lxc" {
					return errf("unable to destroy CT %d - container is running", vmid)
				}
				return errf("VM %d is running - destroy failed", vmid)
			}
			return nil
		}
		if err := early(g); err != nil {
			return nil, nil, err
		}
		skiplock := r.bool("skiplock")
		purge, unref := r.bool("purge"), r.bool("destroy-unreferenced-disks")
		return s.spawnLocked(node, taskPrefix(kind)+"destroy", strconv.Itoa(vmid), r.id.user, func(t *taskRun) error {
			if err := t.sleep(s.opts.Delays.Delete); err != nil {
				return err
			}
			err := s.within(kind, node, vmid, func(g *guest) error {
				if err := early(g); err != nil {
					return err
				}
				if !skiplock {
					if err := g.lockError(); err != nil {
						return err
					}
				}
				if force && g.running() {
					g.setStopped()
				}
				s.destroyLocked(vmid, unref || kind == "lxc")
				return nil
			})
			if err == nil && purge {
				t.logf("purging %s %d from related configurations..", map[string]string{"qemu": "VM", "lxc": "CT"}[kind], vmid)
			}
			return err
		}), nil, nil
	}
}

// startWorker is the qmstart/vzstart worker.
func (s *Sim) startWorker(kind, node string, vmid int, skiplock bool) func(t *taskRun) error {
	return func(t *taskRun) error {
		if err := t.sleep(s.opts.Delays.Start); err != nil {
			return err
		}
		return s.within(kind, node, vmid, func(g *guest) error {
			if g.template() {
				if kind == "lxc" {
					return errf("you can't start a CT if it's a template")
				}
				return errf("you can't start a vm if it's a template")
			}
			if !skiplock && g.lock != "suspended" {
				if err := g.lockError(); err != nil {
					return err
				}
			}
			if g.running() {
				return errf("VM %d already running", vmid)
			}
			if g.lock == "suspended" {
				g.lock = ""
			}
			g.setRunning(time.Now())
			return nil
		})
	}
}

func hStart(kind string) handlerFunc {
	return func(s *Sim, r *req) (any, map[string]any, error) {
		s.mu.Lock()
		defer s.mu.Unlock()
		node, vmid := r.str("node"), vmidOf(r)
		g, err := s.guestLocked(kind, node, vmid)
		if err != nil {
			return nil, nil, err
		}
		if kind == "lxc" && g.running() {
			return nil, nil, errf("CT %d already running", vmid)
		}
		return s.spawnLocked(node, taskPrefix(kind)+"start", strconv.Itoa(vmid), r.id.user,
			s.startWorker(kind, node, vmid, r.bool("skiplock"))), nil, nil
	}
}

func hStop(kind string) handlerFunc {
	return func(s *Sim, r *req) (any, map[string]any, error) {
		s.mu.Lock()
		defer s.mu.Unlock()
		node, vmid := r.str("node"), vmidOf(r)
		g, err := s.guestLocked(kind, node, vmid)
		if err != nil {
			return nil, nil, err
		}
		if kind == "lxc" && !g.running() {
			return nil, nil, errf("CT %d not running", vmid)
		}
		if r.bool("overrule-shutdown") {
			for _, t := range s.tasks {
				if t.running && t.id == strconv.Itoa(vmid) && strings.HasSuffix(t.typ, "shutdown") && !t.stopped {
					t.stopped = true
					close(t.stop)
				}
			}
		}
		skiplock := r.bool("skiplock")
		return s.spawnLocked(node, taskPrefix(kind)+"stop", strconv.Itoa(vmid), r.id.user, func(t *taskRun) error {
			err := s.within(kind, node, vmid, func(g *guest) error {
				if !g.running() {
					return errNothingToDo
				}
				if !skiplock {
					return g.lockError()
				}
				return nil
			})
			if err == errNothingToDo {
				return nil
			}
			if err != nil {
				return err
			}
			if err := t.sleep(s.opts.Delays.Stop); err != nil {
				return err
			}
			return s.within(kind, node, vmid, func(g *guest) error { g.setStopped(); return nil })
		}), nil, nil
	}
}

var errNothingToDo = fmt.Errorf("nothing to do")

func hShutdown(kind string) handlerFunc {
	return func(s *Sim, r *req) (any, map[string]any, error) {
		s.mu.Lock()
		defer s.mu.Unlock()
		node, vmid := r.str("node"), vmidOf(r)
		g, err := s.guestLocked(kind, node, vmid)
		if err != nil {
			return nil, nil, err
		}
		force := r.bool("forceStop")
		if kind == "lxc" && !g.running() {
			return nil, nil, errf("CT %d not running", vmid)
		}
		pausedStop := false
		if kind == "qemu" && g.paused {
			if !force {
				return nil, nil, errf("VM is paused - cannot shutdown")
			}
			pausedStop = true
		}
		timeout := time.Duration(r.int("timeout", 60)) * time.Second
		skiplock := r.bool("skiplock")
		return s.spawnLocked(node, taskPrefix(kind)+"shutdown", strconv.Itoa(vmid), r.id.user, func(t *taskRun) error {
			var ignores bool
			err := s.within(kind, node, vmid, func(g *guest) error {
				if !g.running() {
					return errNothingToDo
				}
				ignores = g.ignoreShutdown && !pausedStop
				if !skiplock {
					return g.lockError()
				}
				return nil
			})
			if err == errNothingToDo {
				return nil
			}
			if err != nil {
				return err
			}
			wait := s.opts.Delays.Shutdown
			if pausedStop {
				wait = s.opts.Delays.Stop
			}
			timedOut := ignores || wait > timeout
			if timedOut {
				wait = timeout
			}
			if err := t.sleep(wait); err != nil {
				return err
			}
			if timedOut {
				if !force {
					if kind == "lxc" {
						return errf("container did not stop")
					}
					return errf("VM quit/powerdown failed - got timeout")
				}
				if kind == "qemu" {
					t.warn("VM still running - terminating now with SIGTERM")
				}
			}
			return s.within(kind, node, vmid, func(g *guest) error { g.setStopped(); return nil })
		}), nil, nil
	}
}

func hReboot(kind string) handlerFunc {
	return func(s *Sim, r *req) (any, map[string]any, error) {
		s.mu.Lock()
		defer s.mu.Unlock()
		node, vmid := r.str("node"), vmidOf(r)
		g, err := s.guestLocked(kind, node, vmid)
		if err != nil {
			return nil, nil, err
		}
		if !g.running() {
			return nil, nil, errf("VM %d not running", vmid)
		}
		timeout := time.Duration(r.int("timeout", 60)) * time.Second
		return s.spawnLocked(node, taskPrefix(kind)+"reboot", strconv.Itoa(vmid), r.id.user, func(t *taskRun) error {
			var ignores bool
			if err := s.within(kind, node, vmid, func(g *guest) error { ignores = g.ignoreShutdown; return g.lockError() }); err != nil {
				return err
			}
			if ignores || s.opts.Delays.Reboot > timeout {
				if err := t.sleep(timeout); err != nil {
					return err
				}
				if kind == "lxc" {
					return errf("container did not stop")
				}
				return errf("VM quit/powerdown failed - got timeout")
			}
			if err := t.sleep(s.opts.Delays.Reboot); err != nil {
				return err
			}
			return s.within(kind, node, vmid, func(g *guest) error { g.setRunning(time.Now()); return nil })
		}), nil, nil
	}
}

func hReset(s *Sim, r *req) (any, map[string]any, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	node, vmid := r.str("node"), vmidOf(r)
	g, err := s.guestLocked("qemu", node, vmid)
	if err != nil {
		return nil, nil, err
	}
	if !g.running() {
		return nil, nil, errf("VM %d not running", vmid)
	}
	skiplock := r.bool("skiplock")
	return s.spawnLocked(node, "qmreset", strconv.Itoa(vmid), r.id.user, func(t *taskRun) error {
		return s.within("qemu", node, vmid, func(g *guest) error {
			if !skiplock {
				if err := g.lockError(); err != nil {
					return err
				}
			}
			g.setRunning(time.Now())
			return nil
		})
	}), nil, nil
}

func hSuspend(kind string) handlerFunc {
	return func(s *Sim, r *req) (any, map[string]any, error) {
		s.mu.Lock()
		defer s.mu.Unlock()
		node, vmid := r.str("node"), vmidOf(r)
		g, err := s.guestLocked(kind, node, vmid)
		if err != nil {
			return nil, nil, err
		}
		if !g.running() {
			return nil, nil, errf("%s %d not running", g.typeWord(), vmid)
		}
		todisk := r.bool("todisk")
		typ := "qmpause"
		if todisk {
			typ = "qmsuspend"
		}
		if kind == "lxc" {
			typ = "vzsuspend"
		}
		skiplock := r.bool("skiplock")
		return s.spawnLocked(node, typ, strconv.Itoa(vmid), r.id.user, func(t *taskRun) error {
			if err := t.sleep(s.opts.Delays.Stop); err != nil {
				return err
			}
			return s.within(kind, node, vmid, func(g *guest) error {
				if !skiplock {
					if err := g.lockError(); err != nil {
						return err
					}
				}
				if todisk {
					g.setStopped()
					g.lock = "suspended"
					return nil
				}
				g.paused = true
				return nil
			})
		}), nil, nil
	}
}

func hResume(kind string) handlerFunc {
	return func(s *Sim, r *req) (any, map[string]any, error) {
		s.mu.Lock()
		defer s.mu.Unlock()
		node, vmid := r.str("node"), vmidOf(r)
		g, err := s.guestLocked(kind, node, vmid)
		if err != nil {
			return nil, nil, err
		}
		if kind == "lxc" {
			// pve-container refuses to resume a CT that is running (a
			// frozen CT is running).
			if g.running() {
				return nil, nil, errf("CT %d already running", vmid)
			}
		} else if !g.running() && g.lock != "suspended" && !r.bool("nocheck") {
			return nil, nil, errf("VM %d not running", vmid)
		}
		skiplock := r.bool("skiplock")
		return s.spawnLocked(node, taskPrefix(kind)+"resume", strconv.Itoa(vmid), r.id.user, func(t *taskRun) error {
			return s.within(kind, node, vmid, func(g *guest) error {
				if g.lock == "suspended" {
					g.lock = ""
					g.setRunning(time.Now())
					return nil
				}
				if !skiplock {
					if err := g.lockError(); err != nil {
						return err
					}
				}
				if kind == "lxc" && !g.running() {
					return errf("CT %d not running", vmid)
				}
				g.paused = false
				return nil
			})
		}), nil, nil
	}
}
