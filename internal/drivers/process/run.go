package process

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/internal/procfs"
)

// defaultPath is PATH for instances whose environment sets none.
const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// envOf is the environment of an instance: a minimal base (PATH, HOME)
// overlaid with the template's environment, then with extra. The worker's
// own environment is never passed on.
func envOf(t drivers.InstanceTemplate, extra map[string]string) []string {
	m := map[string]string{"PATH": defaultPath, "HOME": "/"}
	for k, v := range t.Environment {
		m[k] = v
	}
	for k, v := range extra {
		m[k] = v
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := make([]string, 0, len(keys))
	for _, k := range keys {
		out = append(out, k+"="+m[k])
	}
	return out
}

func envValue(env []string, key string) string {
	for i := len(env) - 1; i >= 0; i-- {
		if k, v, ok := strings.Cut(env[i], "="); ok && k == key {
			return v
		}
	}
	return ""
}

func workDirOf(t drivers.InstanceTemplate) string {
	if t.WorkDir != "" {
		return t.WorkDir
	}
	return "/"
}

// runAs returns the credential a process of a request naming user runs
// with: user, else DefaultUser; nil means the worker's own (a worker that
// is not root, and the request names no user). Root (uid 0) is
// permission_denied unless AllowRoot.
func (d *Driver) runAs(name string) (*syscall.Credential, error) {
	if name == "" {
		if os.Geteuid() != 0 {
			return nil, nil
		}
		name = d.opts.DefaultUser
		if name == "" {
			name = "0"
		}
	}
	cred, err := credentialOf(name)
	if err != nil {
		return nil, err
	}
	if cred.Uid == 0 && !d.opts.AllowRoot {
		return nil, drivers.Errorf(drivers.PermissionDenied,
			"user: running as root (%q) is not allowed on this worker (process.allow_root is false): run as another user (--run-as)", name)
	}
	return cred, nil
}

// credentialOf resolves a user name or numeric uid.
func credentialOf(name string) (*syscall.Credential, error) {
	u, err := user.Lookup(name)
	if err != nil {
		u, err = user.LookupId(name)
	}
	if err != nil {
		// A numeric uid without a passwd entry (a minimal image) runs
		// with the group of the same number.
		if n, perr := strconv.ParseUint(name, 10, 32); perr == nil {
			u, err = &user.User{Uid: name, Gid: strconv.FormatUint(n, 10)}, nil
		}
	}
	if err != nil {
		return nil, drivers.Errorf(drivers.NotFound, "user: %q not found", name)
	}
	uid, _ := strconv.ParseUint(u.Uid, 10, 32)
	gid, _ := strconv.ParseUint(u.Gid, 10, 32)
	if os.Geteuid() != 0 && int(uid) != os.Geteuid() {
		return nil, drivers.Errorf(drivers.PermissionDenied, "user: running as %q needs root", name)
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

// startErr classifies an error of starting a process, naming the executable.
func startErr(argv0 string, err error) error {
	switch {
	case errors.Is(err, exec.ErrNotFound), errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("executable %q not found: %w", argv0, err)
	case errors.Is(err, os.ErrPermission):
		return fmt.Errorf("executable %q: %w", argv0, err)
	}
	return fmt.Errorf("starting %s: %w", argv0, err)
}

// Start starts the instance's process in its own session, its output
// going to the log files, then watches it for StartSettle: a process that
// fails within it (a non-zero exit status, or killed) is Exited, with its
// exit status and last output lines.
func (d *Driver) Start(ctx context.Context, name string) (bool, error) {
	changed, done, err := d.start(ctx, name)
	settle := time.Duration(d.opts.StartSettle)
	if err != nil || !changed || settle <= 0 {
		return changed, err
	}
	t := time.NewTimer(settle)
	defer t.Stop()
	select {
	case <-done:
		return true, d.earlyExit(name, settle)
	case <-t.C:
	case <-ctx.Done(): // started; the caller stopped waiting for the verdict
	}
	return true, nil
}

// earlyExit is the error of a process that exited within the settle
// window, or nil when it exited with status 0.
func (d *Driver) earlyExit(name string, settle time.Duration) error {
	d.mu.Lock()
	in, err := d.lookup(name)
	if err != nil {
		d.mu.Unlock()
		return nil // deleted meanwhile
	}
	r := in.rec
	state, native, pumps := r.State, r.Native, in.pumps
	d.mu.Unlock()
	if state != drivers.StateError {
		return nil // exit status 0 (or stopped through this driver)
	}
	if pumps != nil { // let the pumps store the last output (bounded: a child may hold the pipe)
		flushed := make(chan struct{})
		go func() { pumps.Wait(); close(flushed) }()
		select {
		case <-flushed:
		case <-time.After(earlyExitFlush):
		}
	}
	return drivers.Errorf(drivers.Exited, "instance %q %s within %v of its start%s", name, native, settle, d.lastOutput(name, earlyExitLines))
}

// earlyExitLines is how many output lines an early exit's error quotes;
// earlyExitFlush how long it waits for them to be stored.
const (
	earlyExitLines = 5
	earlyExitFlush = 300 * time.Millisecond
)

// lastOutput formats the last n lines of an instance's output for an
// error: "; last output: [stderr] boom | [stdout] hi" ("" without any).
func (d *Driver) lastOutput(name string, n int) string {
	var lines [][]drivers.LogLine
	for _, s := range streams {
		t, err := d.tail(name, s, n, false)
		if err != nil {
			continue
		}
		lines = append(lines, t.lines)
	}
	all := mergeLines(lines...)
	if len(all) > n {
		all = all[len(all)-n:]
	}
	if len(all) == 0 {
		return "; no output"
	}
	parts := make([]string, len(all))
	for i, l := range all {
		text := l.Line
		if len(text) > 200 {
			text = text[:200] + "…"
		}
		parts[i] = "[" + l.Stream + "] " + text
	}
	return "; last output: " + strings.Join(parts, " | ")
}

// start starts the process; done is closed when it exits.
func (d *Driver) start(ctx context.Context, name string) (changed bool, done chan struct{}, err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	in, err := d.lookup(name)
	if err != nil {
		return false, nil, err
	}
	if in.rec.State == drivers.StateRunning {
		return false, nil, nil
	}
	if err := ctx.Err(); err != nil {
		return false, nil, fmt.Errorf("start %s: %w", name, err)
	}
	r := in.rec
	t := r.Template
	argv := argvOf(t)
	env := envOf(t, nil)
	path, err := resolveExecutable(argv[0], env, t.WorkDir)
	if err != nil {
		return false, nil, err
	}
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		return false, nil, fmt.Errorf("start %s: %w", name, err)
	}
	defer devnull.Close()
	attr := &syscall.SysProcAttr{Setsid: true}
	cred, err := d.runAs(t.User)
	if err != nil {
		return false, nil, err
	}
	attr.Credential = cred
	limited := d.cg != nil && !r.Limits.IsZero()
	if limited {
		if err := d.cg.apply(r.ID, r.Limits); err != nil {
			return false, nil, err
		}
		var leave func()
		path, argv, leave, err = d.cg.enter(r.ID, attr, path, argv)
		if err != nil {
			return false, nil, err
		}
		defer leave()
	}
	pw, pr, err := outputPipes()
	if err != nil {
		return false, nil, fmt.Errorf("output pipes of %s: %w", name, err)
	}
	defer closeAll(pw[:])
	defer closeAll(pr[:])
	// Intent before effect: the start is recorded (fsync'd) before the
	// process exists, with the nonce its marker will carry, so a restart
	// after a crash at any point finds it (reconcile).
	nonce := newID()
	r.Starting = &startIntent{Nonce: nonce, Planned: time.Now().UTC()}
	if err := d.writeRecord(r); err != nil {
		r.Starting = nil
		return false, nil, fmt.Errorf("recording start of %s: %w", name, err)
	}
	fault("start.intent")
	env = append(env, markEnv+"="+d.markOf(r.ID, nonce))
	// stdout and stderr are pipes read by the worker (logs.go); the process
	// also holds the read ends (fds 3 and 4), so it never gets EPIPE while
	// no worker runs.
	proc, err := os.StartProcess(path, argv, &os.ProcAttr{
		Dir: workDirOf(t), Env: env, Files: []*os.File{devnull, pw[0], pw[1], pr[0], pr[1]}, Sys: attr,
	})
	if err != nil {
		r.Starting = nil
		_ = d.writeRecord(r)
		return false, nil, startErr(argv[0], err)
	}
	fault("start.spawned")
	closeAll(pw[:]) // the worker must not keep a write end: EOF comes when the instance's are closed
	st, err := procfs.ReadStat(proc.Pid)
	if err != nil {
		// Exited before we could read its start time: reap it and report.
		ps, _ := proc.Wait()
		r.Starting = nil
		_ = d.writeRecord(r)
		return false, nil, drivers.Errorf(drivers.Exited, "instance %q exited at once (%v)", name, ps)
	}
	if limited {
		_ = d.cg.addTree(r.ID, proc.Pid) // already inside, unless started without /bin/sh
	}
	r.State = drivers.StateRunning
	r.Native = ""
	r.Pid, r.StartTicks, r.BootID, r.Nonce = proc.Pid, st.StartTicks, d.boot, nonce
	r.Starting = nil
	r.StartedAt = time.Now().UTC()
	r.ExitedAt, r.ExitCode, r.ExitSignal = time.Time{}, nil, ""
	in.stopping = false
	in.prev = nil
	in.done = make(chan struct{})
	if err := d.writeRecord(r); err != nil {
		// Without a record the process could not be re-adopted: undo.
		_ = syscall.Kill(-proc.Pid, syscall.SIGKILL)
		_, _ = proc.Wait()
		r.State, r.Pid, r.StartTicks, r.Nonce = drivers.StateStopped, 0, 0, ""
		return false, nil, fmt.Errorf("recording state of %s: %w", name, err)
	}
	fault("start.confirmed")
	// The worker reads through its own copies of the read ends: output of
	// a process that already exited is still in the pipes.
	own := [2]string{fmt.Sprintf("/proc/self/fd/%d", pr[0].Fd()), fmt.Sprintf("/proc/self/fd/%d", pr[1].Fd())}
	if err := d.startPumps(in, own); err != nil {
		d.issues = append(d.issues, fmt.Sprintf("%s: output not captured: %v", name, err))
	}
	go d.waitExit(in, proc, st.StartTicks, in.done)
	d.events.emit(drivers.Event{Type: drivers.EventStarted, Instance: name, Time: r.StartedAt, State: r.State,
		Details: map[string]string{"pid": strconv.Itoa(proc.Pid)}})
	return true, in.done, nil
}

// waitExit reaps a child of this worker. It outlives Close (a child must
// be reaped, and Close must not wait for instances to exit), but then
// records nothing: the next worker re-adopting the instance sees the exit
// through /proc.
func (d *Driver) waitExit(in *inst, proc *os.Process, ticks uint64, done chan struct{}) {
	ps, err := proc.Wait()
	code, sig := -1, ""
	if err == nil {
		if ws, ok := ps.Sys().(syscall.WaitStatus); ok {
			switch {
			case ws.Exited():
				code = ws.ExitStatus()
			case ws.Signaled():
				sig = unixSignalName(ws.Signal())
			}
		}
	}
	d.exited(in, proc.Pid, ticks, done, code, sig)
}

// pollExit watches a re-adopted process (not our child) until it exits
// or the driver closes.
func (d *Driver) pollExit(in *inst, pid int, ticks uint64, done chan struct{}) {
	defer d.bgWG.Done()
	tk := time.NewTicker(time.Duration(d.opts.PollInterval))
	defer tk.Stop()
	for {
		select {
		case <-d.bg.Done():
			return
		case <-tk.C:
		}
		if !procfs.Alive(pid, ticks) {
			d.exited(in, pid, ticks, done, -1, "")
			return
		}
	}
}

// exited records the exit of the process (pid, ticks) of in. code is -1
// and sig "" when the status is unknown (a re-adopted process).
func (d *Driver) exited(in *inst, pid int, ticks uint64, done chan struct{}, code int, sig string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	defer close(done)
	r := in.rec
	if !d.connected || r.Pid != pid || r.StartTicks != ticks || d.insts[r.Name] != in {
		return // closed, deleted, or already restarted
	}
	now := time.Now().UTC()
	r.Pid, r.StartTicks, r.ExitedAt = 0, 0, now
	r.ExitSignal = sig
	r.ExitCode = nil
	if code >= 0 {
		c := code
		r.ExitCode = &c
	}
	details := map[string]string{"pid": strconv.Itoa(pid)}
	ev := drivers.Event{Instance: r.Name, Time: now}
	switch {
	case in.stopping:
		r.State, r.Native = drivers.StateStopped, "stopped"
		ev.Type = drivers.EventStopped
		details["reason"] = "stopped"
	case code == 0:
		r.State, r.Native = drivers.StateStopped, "exited (status 0)"
		ev.Type = drivers.EventStopped
		details["reason"] = "exited"
		details["exit_code"] = "0"
	case code > 0:
		r.State, r.Native = drivers.StateError, fmt.Sprintf("exited (status %d)", code)
		ev.Type = drivers.EventFailed
		details["reason"] = "exited"
		details["exit_code"] = strconv.Itoa(code)
		ev.Err = drivers.Errorf(drivers.Internal, "instance %q exited with status %d", r.Name, code)
	case sig != "":
		r.State, r.Native = drivers.StateError, "killed by "+sig
		ev.Type = drivers.EventFailed
		details["reason"] = "killed"
		details["signal"] = sig
		ev.Err = drivers.Errorf(drivers.Internal, "instance %q was killed by %s", r.Name, sig)
	default:
		r.State, r.Native = drivers.StateError, "exited (status unknown: re-adopted process)"
		ev.Type = drivers.EventFailed
		details["reason"] = "exited"
		ev.Err = drivers.Errorf(drivers.Internal, "instance %q exited (status unknown)", r.Name)
	}
	in.stopping = false
	ev.State = r.State
	ev.Details = details
	if err := d.writeRecord(r); err != nil {
		d.issues = append(d.issues, fmt.Sprintf("%s: recording exit: %v", r.Name, err))
	}
	d.events.emit(ev)
}

func unixSignalName(s syscall.Signal) string {
	switch s {
	case syscall.SIGKILL:
		return "SIGKILL"
	case syscall.SIGTERM:
		return "SIGTERM"
	case syscall.SIGINT:
		return "SIGINT"
	case syscall.SIGSEGV:
		return "SIGSEGV"
	case syscall.SIGABRT:
		return "SIGABRT"
	case syscall.SIGHUP:
		return "SIGHUP"
	}
	return "signal " + strconv.Itoa(int(s))
}

// Stop sends SIGTERM to the process group and SIGKILL after the timeout;
// Force sends SIGKILL at once. Stragglers of the group (and, with limits,
// of the cgroup) are killed once the main process has exited.
func (d *Driver) Stop(ctx context.Context, name string, opts drivers.StopOptions) (bool, error) {
	d.mu.Lock()
	in, err := d.lookup(name)
	if err != nil {
		d.mu.Unlock()
		return false, err
	}
	r := in.rec
	if r.State != drivers.StateRunning {
		d.mu.Unlock()
		return false, nil
	}
	pid, ticks, done, id := r.Pid, r.StartTicks, in.done, r.ID
	in.stopping = true
	d.mu.Unlock()

	timeout := opts.Timeout
	if timeout <= 0 {
		timeout = time.Duration(d.opts.StopTimeout)
	}
	sig := syscall.SIGTERM
	if opts.Force {
		sig = syscall.SIGKILL
	}
	d.signalGroup(pid, ticks, sig)
	fault("stop.signalled")
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case <-done:
	case <-timer.C:
		d.signalGroup(pid, ticks, syscall.SIGKILL)
	case <-ctx.Done():
		// The caller gave up before the graceful timeout: do not escalate
		// on its behalf; the process keeps running (it got SIGTERM).
		if !opts.Force {
			d.mu.Lock()
			if in.done == done {
				in.stopping = false
			}
			d.mu.Unlock()
			return false, drivers.Errorf(drivers.Timeout, "stop %q: caller's deadline ended before the process exited (SIGTERM sent, still running): %v", name, ctx.Err())
		}
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		return false, drivers.Errorf(drivers.Timeout, "instance %q (pid %d) did not exit after SIGKILL", name, pid)
	}
	// The group leader is gone; kill what is left of its group and
	// cgroup, unless a concurrent Start already runs a new process there.
	d.mu.Lock()
	defer d.mu.Unlock()
	if in.rec.State != drivers.StateRunning {
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		if d.cg != nil {
			d.cg.killAll(id)
		}
	}
	return true, nil
}

// signalGroup signals the process group of pid, but only while pid is
// still the instance's process (never a reused pid).
func (d *Driver) signalGroup(pid int, ticks uint64, sig syscall.Signal) {
	s, err := procfs.ReadStat(pid)
	if err != nil || s.StartTicks != ticks {
		return
	}
	if s.PGrp == pid {
		_ = syscall.Kill(-pid, sig)
	} else {
		_ = syscall.Kill(pid, sig)
	}
}
