package process

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/internal/procfs"
)

// cgroups applies limits through the cgroup file system: v2 (unified,
// when <root>/cgroup.controllers exists) or v1 (one hierarchy per
// controller, <root>/<controller>). Each instance gets the cgroup
// <parent>/<instance id> (the id, not the name, so names may be reused).
type cgroups struct {
	v2     bool
	root   string
	parent string
	// v1: which controllers are usable (memory is required).
	ctrls map[string]bool
}

var cgroupControllers = []string{"memory", "cpu", "pids"}

// probeCgroups returns nil when limits are unsupported here: cgroups off
// in the options, no cgroup file system, or not writable (not root, or a
// read-only mount in a container).
func probeCgroups(o Options) *cgroups {
	if o.Cgroups == "off" {
		return nil
	}
	c := &cgroups{root: o.CgroupRoot, parent: o.CgroupParent, ctrls: map[string]bool{}}
	if _, err := os.Stat(filepath.Join(c.root, "cgroup.controllers")); err == nil {
		c.v2 = true
		// Delegate the controllers to the parent and from it to instances,
		// one at a time (one unavailable controller fails a whole write).
		enable := func(dir string) {
			for _, ctl := range cgroupControllers {
				_ = os.WriteFile(filepath.Join(dir, "cgroup.subtree_control"), []byte("+"+ctl), 0)
			}
		}
		enable(c.root)
		p := filepath.Join(c.root, c.parent)
		if err := os.MkdirAll(p, 0o755); err != nil {
			return nil
		}
		enable(p)
		b, err := os.ReadFile(filepath.Join(p, "cgroup.subtree_control"))
		if err != nil {
			return nil
		}
		for _, ctl := range strings.Fields(string(b)) {
			c.ctrls[ctl] = true
		}
	} else {
		for _, ctl := range cgroupControllers {
			base := filepath.Join(c.root, ctl)
			if _, err := os.Stat(filepath.Join(base, "cgroup.procs")); err != nil {
				continue
			}
			if err := os.MkdirAll(filepath.Join(base, c.parent), 0o755); err != nil {
				continue
			}
			c.ctrls[ctl] = true
		}
	}
	if !c.ctrls["memory"] {
		return nil
	}
	return c
}

func (c *cgroups) describe() string {
	var on []string
	for _, ctl := range cgroupControllers {
		if c.ctrls[ctl] {
			on = append(on, ctl)
		}
	}
	v := "v1"
	if c.v2 {
		v = "v2"
	}
	return v + " (" + strings.Join(on, ",") + ")"
}

// dir is the instance's cgroup directory for a controller (v2: one dir).
func (c *cgroups) dir(ctl, id string) string {
	if c.v2 {
		return filepath.Join(c.root, c.parent, id)
	}
	return filepath.Join(c.root, ctl, c.parent, id)
}

// dirs lists the instance's cgroup directories, one per usable controller
// (one in v2).
func (c *cgroups) dirs(id string) []string {
	if c.v2 {
		return []string{c.dir("", id)}
	}
	var out []string
	for _, ctl := range cgroupControllers {
		if c.ctrls[ctl] {
			out = append(out, c.dir(ctl, id))
		}
	}
	return out
}

// checkLimits says which limits cg can enforce; cg nil means none.
func checkLimits(cg *cgroups, l drivers.ResourceLimits) error {
	switch {
	case l.CPUCores < 0 || l.MemoryMB < 0 || l.DiskGB < 0 || l.NetworkMbps < 0 || l.PIDs < 0:
		return drivers.Errorf(drivers.InvalidArgument, "resources: limits must not be negative")
	case l.IsZero():
		return nil
	case cg == nil:
		return drivers.Unsupportedf("resources: limits need a writable cgroup file system, which this machine does not offer")
	case l.DiskGB != 0:
		return drivers.Unsupportedf("disk_gb: the process driver cannot limit disk space")
	case l.NetworkMbps != 0:
		return drivers.Unsupportedf("network_mbps: the process driver cannot limit network bandwidth")
	case l.CPUCores != 0 && !cg.ctrls["cpu"]:
		return drivers.Unsupportedf("cpu_cores: the cpu cgroup controller is not available")
	case l.PIDs != 0 && !cg.ctrls["pids"]:
		return drivers.Unsupportedf("pids: the pids cgroup controller is not available")
	}
	return nil
}

func (d *Driver) checkLimits(l drivers.ResourceLimits) error {
	return checkLimits(d.cgroupsOnce(), l)
}

// apply creates the instance's cgroup and writes every limit (zero fields
// as "no limit").
func (c *cgroups) apply(id string, l drivers.ResourceLimits) error {
	for _, dir := range c.dirs(id) {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("creating cgroup: %w", err)
		}
	}
	mem, cpuQuota, pids := "-1", "-1", "max"
	if c.v2 {
		mem = "max"
	}
	if l.MemoryMB > 0 {
		mem = strconv.FormatInt(l.MemoryMB<<20, 10)
	}
	if l.CPUCores > 0 {
		cpuQuota = strconv.FormatInt(int64(l.CPUCores*100000), 10)
	}
	if l.PIDs > 0 {
		pids = strconv.FormatInt(l.PIDs, 10)
	}
	type w struct{ ctl, file, val string }
	var writes []w
	if c.v2 {
		cpu := "max 100000"
		if l.CPUCores > 0 {
			cpu = cpuQuota + " 100000"
		}
		writes = []w{{"memory", "memory.max", mem}, {"cpu", "cpu.max", cpu}, {"pids", "pids.max", pids}}
	} else {
		writes = []w{{"memory", "memory.limit_in_bytes", mem}, {"cpu", "cpu.cfs_period_us", "100000"},
			{"cpu", "cpu.cfs_quota_us", cpuQuota}, {"pids", "pids.max", pids}}
	}
	for _, x := range writes {
		if !c.ctrls[x.ctl] {
			continue
		}
		if err := os.WriteFile(filepath.Join(c.dir(x.ctl, id), x.file), []byte(x.val), 0); err != nil {
			return fmt.Errorf("setting %s to %s: %w", x.file, x.val, err)
		}
	}
	return nil
}

// addTree moves pid and its descendants into the instance's cgroup. The
// process was started before it could be moved, so children it forked
// meanwhile are moved too (twice over, for ones forked during the move).
func (c *cgroups) addTree(id string, pid int) error {
	var firstErr error
	for round := 0; round < 2; round++ {
		procs, err := procfs.Tree(pid)
		if err != nil {
			return err
		}
		for _, p := range procs {
			for _, dir := range c.dirs(id) {
				err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(p.Pid)), 0)
				if err != nil && !errors.Is(err, syscall.ESRCH) && firstErr == nil {
					firstErr = err
				}
			}
		}
	}
	return firstErr
}

// enterScript is run by /bin/sh before the real command when limits apply:
// it moves itself into each cgroup.procs given before "--" and then execs
// the command, so the command starts inside its cgroup (no window in
// which it or its children run unlimited). The pid and start time stay
// those of the command: exec keeps both.
const enterScript = `while [ "$1" != -- ]; do echo $$ > "$1" || { echo "subbus: cannot enter cgroup $1" >&2; exit 126; }; shift; done; shift; exec "$@"`

// enter arranges for a process started with attr (its credential set)
// and path/argv to start inside the instance's cgroups, and returns the
// path and argv to start plus a cleanup to call once it started. A
// process of the worker's own user (or root) goes through wrap. For
// another user: on cgroup v2 the kernel places it at clone time
// (CgroupFD: moving itself would need write access to the common
// ancestor's cgroup.procs); on v1 each cgroup.procs is handed to that
// user, so the wrap script can move itself.
func (c *cgroups) enter(id string, attr *syscall.SysProcAttr, path string, argv []string) (string, []string, func(), error) {
	cred := attr.Credential
	if cred == nil || cred.Uid == 0 || int(cred.Uid) == os.Geteuid() {
		path, argv = c.wrap(id, path, argv)
		return path, argv, func() {}, nil
	}
	if c.v2 {
		f, err := os.Open(c.dirs(id)[0])
		if err != nil {
			return "", nil, nil, drivers.Wrap(classifyOS(err), err, "opening cgroup")
		}
		attr.UseCgroupFD, attr.CgroupFD = true, int(f.Fd())
		return path, argv, func() { f.Close() }, nil
	}
	for _, dir := range c.dirs(id) {
		if err := os.Chown(filepath.Join(dir, "cgroup.procs"), int(cred.Uid), -1); err != nil {
			return "", nil, nil, drivers.Wrap(classifyOS(err), err, "handing the cgroup to uid "+strconv.Itoa(int(cred.Uid)))
		}
	}
	path, argv = c.wrap(id, path, argv)
	return path, argv, func() {}, nil
}

// wrap returns the path and argv that start path/argv inside the
// instance's cgroup. Without /bin/sh it returns them unchanged (the
// caller moves the process right after it starts).
func (c *cgroups) wrap(id, path string, argv []string) (string, []string) {
	const sh = "/bin/sh"
	if _, err := os.Stat(sh); err != nil {
		return path, argv
	}
	out := []string{"sh", "-c", enterScript, "subbus-cgroup-enter"}
	for _, dir := range c.dirs(id) {
		out = append(out, filepath.Join(dir, "cgroup.procs"))
	}
	out = append(out, "--", path)
	return sh, append(out, argv[1:]...)
}

// pids lists the processes in the instance's cgroup.
func (c *cgroups) pids(id string) []int {
	dirs := c.dirs(id)
	if len(dirs) == 0 {
		return nil
	}
	b, err := os.ReadFile(filepath.Join(dirs[0], "cgroup.procs"))
	if err != nil {
		return nil
	}
	var out []int
	for _, f := range strings.Fields(string(b)) {
		if p, err := strconv.Atoi(f); err == nil {
			out = append(out, p)
		}
	}
	return out
}

// killAll SIGKILLs every process left in the instance's cgroup.
func (c *cgroups) killAll(id string) {
	for _, p := range c.pids(id) {
		_ = syscall.Kill(p, syscall.SIGKILL)
	}
}

// remove kills what is left in the instance's cgroup and removes it.
func (c *cgroups) remove(id string) {
	c.killAll(id)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	for _, dir := range c.dirs(id) {
		for {
			err := syscall.Rmdir(dir)
			if err == nil || errors.Is(err, syscall.ENOENT) || ctx.Err() != nil {
				break
			}
			time.Sleep(20 * time.Millisecond) // emptied processes take a moment to go
		}
	}
}

// GetLimits returns the limits recorded for the instance (applied while
// it runs).
func (d *Driver) GetLimits(ctx context.Context, name string) (drivers.ResourceLimits, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	in, err := d.lookup(name)
	if err != nil {
		return drivers.ResourceLimits{}, err
	}
	if d.cg == nil {
		return drivers.ResourceLimits{}, drivers.Unsupportedf("limits: this machine offers no writable cgroup file system")
	}
	return in.rec.Limits, nil
}

// SetLimits merges the non-zero fields of l into the instance's limits,
// records them, and applies them at once to a running instance (moving it
// into its cgroup if it ran without one).
func (d *Driver) SetLimits(ctx context.Context, name string, l drivers.ResourceLimits) (drivers.ResourceLimits, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	in, err := d.lookup(name)
	if err != nil {
		return drivers.ResourceLimits{}, err
	}
	if err := checkLimits(d.cg, l); err != nil {
		return drivers.ResourceLimits{}, err
	}
	if d.cg == nil {
		return drivers.ResourceLimits{}, drivers.Unsupportedf("limits: this machine offers no writable cgroup file system")
	}
	r := in.rec
	next := r.Limits
	if l.CPUCores != 0 {
		next.CPUCores = l.CPUCores
	}
	if l.MemoryMB != 0 {
		next.MemoryMB = l.MemoryMB
	}
	if l.PIDs != 0 {
		next.PIDs = l.PIDs
	}
	if r.State == drivers.StateRunning {
		if err := d.cg.apply(r.ID, next); err != nil {
			return r.Limits, err
		}
		if err := d.cg.addTree(r.ID, r.Pid); err != nil {
			return r.Limits, fmt.Errorf("moving %q into its cgroup: %w", name, err)
		}
	}
	old := r.Limits
	r.Limits = next
	if err := d.writeRecord(r); err != nil {
		r.Limits = old
		return old, fmt.Errorf("recording limits of %s: %w", name, err)
	}
	return next, nil
}
