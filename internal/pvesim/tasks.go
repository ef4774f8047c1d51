package pvesim

import (
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
)

type task struct {
	upid, node, typ, id, user string
	pid, pstart               int
	start, end                time.Time
	running                   bool
	exit                      string
	log                       []string
	stop                      chan struct{}
	stopped                   bool
	release                   chan struct{}
}

// UPID formats a task id exactly as PVE's UPID.pm encode does, trailing
// colon included.
func UPID(node string, pid, pstart int, start time.Time, typ, id, user string) string {
	return fmt.Sprintf("UPID:%s:%08X:%08X:%08X:%s:%s:%s:", node, pid, pstart, start.Unix(), typ, id, user)
}

// reUPID is UPID.pm's decode regex.
var reUPID = regexp.MustCompile(`^UPID:([a-zA-Z0-9]([a-zA-Z0-9\-]*[a-zA-Z0-9])?):([0-9A-Fa-f]{8}):([0-9A-Fa-f]{8,9}):([0-9A-Fa-f]{8}):([^:\s/]+):([^:\s/]*):([^:\s/]+):$`)

// errInterrupted is what a stopped task's worker dies with.
var errInterrupted = errors.New("received interrupt")

// taskRun is a running task's handle for its worker function.
type taskRun struct {
	s        *Sim
	t        *task
	warnings int
}

// logf appends a line to the task log (takes s.mu).
func (r *taskRun) logf(format string, args ...any) {
	r.s.mu.Lock()
	defer r.s.mu.Unlock()
	r.t.log = append(r.t.log, fmt.Sprintf(format, args...))
}

// logfLocked is logf for a caller holding s.mu.
func (r *taskRun) logfLocked(format string, args ...any) {
	r.t.log = append(r.t.log, fmt.Sprintf(format, args...))
}

// warn logs a warning; the task then ends "WARNINGS: n" instead of "OK".
func (r *taskRun) warn(format string, args ...any) {
	r.warnings++
	r.logf("WARN: "+format, args...)
}

// sleep waits d, or until the task is stopped (errInterrupted). A task
// whose type hangs (Sim.HangTasks) waits here until stopped or released.
func (r *taskRun) sleep(d time.Duration) error {
	r.s.mu.Lock()
	hang := r.s.hang[r.t.typ] || r.s.hang[""]
	r.s.mu.Unlock()
	if hang {
		select {
		case <-r.t.stop:
			return errInterrupted
		case <-r.t.release:
		}
	}
	if d <= 0 {
		select {
		case <-r.t.stop:
			return errInterrupted
		default:
			return nil
		}
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-r.t.stop:
		return errInterrupted
	case <-timer.C:
		return nil
	}
}

// spawn starts a task; work runs in its own goroutine without s.mu held
// and returns the task's error (nil: OK or WARNINGS). The caller holds s.mu.
func (s *Sim) spawnLocked(node, typ, id, user string, work func(r *taskRun) error) string {
	s.pid++
	now := time.Now()
	t := &task{node: node, typ: typ, id: id, user: user, pid: s.pid,
		pstart: int(now.Sub(s.started)/(10*time.Millisecond)) + 0x100000, start: now,
		running: true, stop: make(chan struct{}), release: make(chan struct{})}
	t.upid = UPID(node, t.pid, t.pstart, now, typ, id, user)
	s.tasks = append(s.tasks, t)
	s.taskIdx[t.upid] = t
	if len(s.tasks) > 5000 {
		old := s.tasks[0]
		if !old.running {
			delete(s.taskIdx, old.upid)
			s.tasks = s.tasks[1:]
		}
	}
	r := &taskRun{s: s, t: t}
	go func() {
		var err error
		if kind, vmid, ok := flockedTask(typ, id); ok {
			var unlock func()
			if unlock, err = s.flock(kind, vmid, t.stop, nil); err == nil {
				err = work(r)
				unlock()
			}
		} else {
			err = work(r)
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		switch {
		case err != nil:
			msg := strings.TrimRight(err.Error(), "\n")
			t.log = append(t.log, "TASK ERROR: "+msg)
			t.exit = firstLine(msg)
		case r.warnings > 0:
			t.exit = fmt.Sprintf("WARNINGS: %d", r.warnings)
			t.log = append(t.log, "TASK "+t.exit)
		default:
			t.exit = "OK"
			t.log = append(t.log, "TASK OK")
		}
		t.running = false
		t.end = time.Now()
	}()
	return t.upid
}

// releaseHung lets hung tasks continue (after HangTasks(.., false)).
func (s *Sim) releaseHungLocked() {
	for _, t := range s.tasks {
		if t.running && !s.hang[t.typ] && !s.hang[""] {
			select {
			case <-t.release:
			default:
				close(t.release)
			}
		}
	}
}

func (s *Sim) findTask(node, upid string) (*task, error) {
	if !reUPID.MatchString(upid) {
		return nil, errf("unable to parse worker upid '%s'", upid)
	}
	t := s.taskIdx[upid]
	if t == nil || t.node != node {
		return nil, paramError(map[string]string{"upid": "no such task"})
	}
	return t, nil
}

func taskEntry(t *task, withStatus bool) map[string]any {
	e := map[string]any{"upid": t.upid, "node": t.node, "pid": t.pid, "pstart": t.pstart,
		"starttime": t.start.Unix(), "type": t.typ, "id": t.id, "user": t.user}
	if !t.running {
		e["endtime"] = t.end.Unix()
		if withStatus {
			e["status"] = t.exit
		}
	}
	return e
}

func hTaskStatus(s *Sim, r *req) (any, map[string]any, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, err := s.findTask(r.str("node"), r.str("upid"))
	if err != nil {
		return nil, nil, err
	}
	st := map[string]any{"upid": t.upid, "node": t.node, "pid": t.pid, "pstart": t.pstart,
		"starttime": t.start.Unix(), "type": t.typ, "id": t.id, "user": t.user, "status": "running"}
	if !t.running {
		st["status"] = "stopped"
		st["exitstatus"] = t.exit
	}
	return st, nil, nil
}

func hTaskLog(s *Sim, r *req) (any, map[string]any, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, err := s.findTask(r.str("node"), r.str("upid"))
	if err != nil {
		return nil, nil, err
	}
	start := int(r.int("start", 0))
	limit := int(r.int("limit", 50))
	lines := []any{}
	for i := start; i < len(t.log) && (limit <= 0 || i < start+limit); i++ {
		lines = append(lines, map[string]any{"n": i + 1, "t": t.log[i]})
	}
	if len(t.log) == 0 && start == 0 {
		lines = append(lines, map[string]any{"n": 1, "t": "no content"})
	}
	return lines, map[string]any{"total": len(t.log)}, nil
}

func hTaskStop(s *Sim, r *req) (any, map[string]any, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, err := s.findTask(r.str("node"), r.str("upid"))
	if err != nil {
		return nil, nil, err
	}
	if t.running && !t.stopped {
		t.stopped = true
		close(t.stop)
	}
	return nil, nil, nil
}

func hTaskIndex(s *Sim, r *req) (any, map[string]any, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	node := r.str("node")
	source := r.str("source")
	if source == "" {
		source = "archive"
	}
	vmid := r.str("vmid")
	typefilter := r.str("typefilter")
	userfilter := r.str("userfilter")
	statusfilter := r.str("statusfilter")
	errorsOnly := r.bool("errors")
	since, until := r.int("since", 0), r.int("until", 0)
	var list []*task
	for i := len(s.tasks) - 1; i >= 0; i-- {
		t := s.tasks[i]
		if t.node != node {
			continue
		}
		if (source == "archive" && t.running) || (source == "active" && !t.running) {
			continue
		}
		if vmid != "" && t.id != vmid {
			continue
		}
		if typefilter != "" && t.typ != typefilter {
			continue
		}
		if userfilter != "" && !strings.Contains(t.user, userfilter) {
			continue
		}
		if errorsOnly && (t.running || t.exit == "OK") {
			continue
		}
		if statusfilter != "" && !taskStatusMatches(t, statusfilter) {
			continue
		}
		if since > 0 && t.start.Unix() < since || until > 0 && t.start.Unix() > until {
			continue
		}
		list = append(list, t)
	}
	start := int(r.int("start", 0))
	limit := int(r.int("limit", 50))
	out := []any{}
	for i := start; i < len(list) && (limit <= 0 || i < start+limit); i++ {
		out = append(out, taskEntry(list[i], true))
	}
	return out, map[string]any{"total": len(list)}, nil
}

func taskStatusMatches(t *task, filter string) bool {
	for _, f := range strings.Split(filter, ",") {
		switch strings.TrimSpace(f) {
		case "running":
			if t.running {
				return true
			}
		case "ok":
			if !t.running && t.exit == "OK" {
				return true
			}
		case "warning":
			if !t.running && strings.HasPrefix(t.exit, "WARNINGS") {
				return true
			}
		case "error":
			if !t.running && t.exit != "OK" && !strings.HasPrefix(t.exit, "WARNINGS") {
				return true
			}
		}
	}
	return false
}

// hClusterTasks lists the recent tasks of all nodes, newest first.
func hClusterTasks(s *Sim, r *req) (any, map[string]any, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	list := append([]*task(nil), s.tasks...)
	sort.SliceStable(list, func(i, j int) bool { return list[i].start.After(list[j].start) })
	out := []any{}
	for i, t := range list {
		if i >= 1000 {
			break
		}
		out = append(out, taskEntry(t, true))
	}
	return out, nil, nil
}

// flockedTask says whether a task holds the guest's config file lock
// (PVE's flock on lock-VMID.conf) for its whole run, as PVE's workers
// for these types do. Snapshot tasks hold it only briefly (their config
// lock "snapshot" guards the rest), clones take the source's lock shared:
// those are not serialized here.
func flockedTask(typ, id string) (kind string, vmid int, ok bool) {
	switch typ {
	case "qmcreate", "qmstart", "qmstop", "qmshutdown", "qmreboot", "qmreset", "qmpause", "qmsuspend",
		"qmresume", "qmdestroy", "qmconfig", "qmtemplate":
		kind = "qemu"
	case "vzcreate", "vzstart", "vzstop", "vzshutdown", "vzreboot", "vzsuspend", "vzresume", "vzdestroy":
		kind = "lxc"
	default:
		return "", 0, false
	}
	vmid, err := strconv.Atoi(id)
	return kind, vmid, err == nil
}

// lockFile is the file PVE flocks for a guest's config.
func lockFile(kind string, vmid int) string {
	if kind == "lxc" {
		return fmt.Sprintf("/run/lock/lxc/pve-config-%d.lock", vmid)
	}
	return fmt.Sprintf("/var/lock/qemu-server/lock-%d.conf", vmid)
}

// flock takes the guest's config file lock, waiting up to
// Options.LockTimeout (PVE: 10 s) for another holder, like
// lock_config_full. It gives up when stop or done is closed. The caller
// must not hold s.mu.
func (s *Sim) flock(kind string, vmid int, stop <-chan struct{}, done <-chan struct{}) (func(), error) {
	key := fmt.Sprintf("%s/%d", kind, vmid)
	s.mu.Lock()
	ch := s.flocks[key]
	if ch == nil {
		ch = make(chan struct{}, 1)
		s.flocks[key] = ch
	}
	s.mu.Unlock()
	timer := time.NewTimer(s.opts.LockTimeout)
	defer timer.Stop()
	select {
	case ch <- struct{}{}:
		return func() { <-ch }, nil
	case <-timer.C:
		return nil, fmt.Errorf("can't lock file '%s' - got timeout", lockFile(kind, vmid))
	case <-stop:
		return nil, errInterrupted
	case <-done:
		return nil, errInterrupted
	}
}
