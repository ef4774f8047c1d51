package supervisor

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"syscall"
	"time"

	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/internal/procfs"
)

// pollEvery is how often start and stop poll the process state. They never
// use supervisord's waiting calls (wait=true), which block inside
// supervisord and can hang past any deadline of ours.
const pollEvery = 100 * time.Millisecond

// stoppable states are those stopProcess accepts.
func stoppable(state string) bool {
	return state == "RUNNING" || state == "STARTING" || state == "BACKOFF"
}

// stopped states are those in which the program has no process.
func stopped(state string) bool {
	return state == "STOPPED" || state == "EXITED" || state == "FATAL"
}

// wait polls name until done says so or ctx ends.
func (d *Driver) wait(ctx context.Context, name string, done func(processInfo) (bool, error)) (processInfo, error) {
	t := time.NewTicker(pollEvery)
	defer t.Stop()
	for {
		p, err := d.rpc.getProcessInfo(ctx, name)
		if err != nil {
			return p, err
		}
		ok, err := done(p)
		if ok || err != nil {
			return p, err
		}
		select {
		case <-ctx.Done():
			return p, fmt.Errorf("waiting for program %q (now %s): %w", name, p.StateName, ctx.Err())
		case <-t.C:
		}
	}
}

// untilRunning is a wait condition: RUNNING, or a *startFailure as soon
// as the start attempt failed: BACKOFF (the program exited, or could not
// be spawned, before start_secs; supervisord will retry it), FATAL
// (supervisord gave up), or EXITED/STOPPED.
func untilRunning(p processInfo) (bool, error) {
	switch p.StateName {
	case "RUNNING":
		return true, nil
	case "BACKOFF", "FATAL", "EXITED", "STOPPED":
		return false, &startFailure{p: p}
	}
	return false, nil
}

// startFailure is a start attempt that failed; Start turns it into an
// Exited error with the program's last log lines (startFailed).
type startFailure struct{ p processInfo }

func (e *startFailure) Error() string {
	p := e.p
	// supervisord records no exit status for an exit before startsecs,
	// only the spawn error "Exited too quickly …".
	what := "exited before start_secs"
	switch {
	case p.StateName == "EXITED":
		what = fmt.Sprintf("exited (status %d)", p.ExitStatus)
	case p.SpawnErr != "" && !strings.HasPrefix(p.SpawnErr, "Exited too quickly"):
		what = "could not be spawned: " + p.SpawnErr
	}
	switch p.StateName {
	case "BACKOFF":
		return fmt.Sprintf("program %q %s (BACKOFF: supervisord retries it up to startretries times, then gives up with FATAL)", p.namespec(), what)
	case "FATAL":
		return fmt.Sprintf("program %q %s and supervisord gave up (FATAL)", p.namespec(), what)
	}
	return fmt.Sprintf("program %q %s while starting (%s)", p.namespec(), what, p.StateName)
}

// startFailed returns err, or for a *startFailure an Exited error
// carrying the program's last log lines.
func (d *Driver) startFailed(ctx context.Context, name string, err error) error {
	var f *startFailure
	if !errors.As(err, &f) {
		return err
	}
	var lines []string
	for _, s := range []string{"stdout", "stderr"} {
		got, terr := d.tailLines(ctx, name, &stream{name: s}, startFailureLines)
		if terr != nil {
			continue
		}
		for _, l := range got {
			lines = append(lines, "["+s+"] "+l)
		}
	}
	if len(lines) > startFailureLines { // stdout's then stderr's: keep the end of each
		lines = lines[len(lines)-startFailureLines:]
	}
	out := "; no output"
	if len(lines) > 0 {
		out = "; last output: " + strings.Join(lines, " | ")
	}
	return drivers.Errorf(drivers.Exited, "%s%s", f.Error(), out)
}

// startFailureLines is how many log lines a failed start's error quotes.
const startFailureLines = 6

// Start starts the program without supervisord's wait and polls until it
// is RUNNING (which takes the program's startsecs).
func (d *Driver) Start(ctx context.Context, name string) (bool, error) {
	ctx, cancel := d.ctx(ctx)
	defer cancel()
	var started processInfo
	d.ownBegin(name)
	defer func() { d.ownEnd(name, started.PID) }()
	p, err := d.rpc.getProcessInfo(ctx, name)
	if err != nil {
		return false, err
	}
	switch {
	case p.StateName == "RUNNING":
		return false, nil
	case p.StateName == "STARTING" || p.StateName == "BACKOFF":
		_, err := d.wait(ctx, name, untilRunning)
		return false, d.startFailed(ctx, name, err)
	case p.StateName == "STOPPING":
		if _, err := d.wait(ctx, name, func(p processInfo) (bool, error) { return stopped(p.StateName), nil }); err != nil {
			return false, err
		}
	}
	err = d.rpc.call(ctx, "supervisor.startProcess", nil, name, false)
	changed := true
	switch {
	case isFault(err, faultAlreadyStarted):
		changed, err = false, nil
	case isFault(err, faultSpawnError):
		// supervisord reaps right after spawning, so a program that exits
		// at once is reported as a spawn error even with wait=false; its
		// state (BACKOFF with retries left, or FATAL) tells the outcome.
		err = nil
	}
	if err != nil {
		return false, err
	}
	started, err = d.wait(ctx, name, untilRunning)
	return changed, d.startFailed(ctx, name, err)
}

// Stop stops the program with its stop signal, without supervisord's wait.
// After opts.Timeout (or at once with opts.Force) it sends SIGKILL.
// Because the stop goes through stopProcess first, supervisord treats the
// exit as expected and does not autorestart the program.
func (d *Driver) Stop(ctx context.Context, name string, opts drivers.StopOptions) (bool, error) {
	ctx, cancel := d.ctx(ctx)
	defer cancel()
	d.ownBegin(name)
	defer d.ownEnd(name, 0)
	p, err := d.rpc.getProcessInfo(ctx, name)
	if err != nil {
		return false, err
	}
	if !stoppable(p.StateName) && p.StateName != "STOPPING" {
		return false, nil
	}
	if p.StateName != "STOPPING" {
		err := d.rpc.call(ctx, "supervisor.stopProcess", nil, name, false)
		if isFault(err, faultNotRunning) {
			return false, nil // it stopped on its own meanwhile
		}
		if err != nil {
			return false, err
		}
	}
	gone := func(p processInfo) (bool, error) { return stopped(p.StateName), nil }
	if !opts.Force {
		graceCtx, cancelGrace := context.WithTimeout(ctx, opts.Timeout)
		_, err := d.wait(graceCtx, name, gone)
		graceOver := graceCtx.Err() != nil && ctx.Err() == nil
		cancelGrace()
		if err == nil {
			return true, nil
		}
		if !graceOver {
			return false, err
		}
	}
	if err := d.kill(ctx, name); err != nil {
		return false, err
	}
	if _, err := d.wait(ctx, name, gone); err != nil {
		return false, err
	}
	return true, nil
}

// kill sends SIGKILL to the program's process through supervisord; a
// process already gone is fine. supervisord's signalProcess reaches only
// the main process, not the rest of its process group (killasgroup covers
// supervisord's own escalation only), so children that ignore the stop
// signal would outlive a killed shell. When the program's process is
// visible in this host's /proc as a group leader whose parent is
// supervisord (so the pid is not another host's or namespace's), the
// whole group is killed as well.
func (d *Driver) kill(ctx context.Context, name string) error {
	group := d.localGroup(ctx, name)
	err := d.rpc.call(ctx, "supervisor.signalProcess", nil, name, "KILL")
	if isFault(err, faultNotRunning) {
		err = nil
	}
	if group > 0 {
		// The group id stays reserved while any member lives, so it cannot
		// name another group even after supervisord reaped the leader.
		if kerr := syscall.Kill(-group, syscall.SIGKILL); kerr != nil && !errors.Is(kerr, syscall.ESRCH) && err == nil {
			err = drivers.Errorf(drivers.Internal, "killing the process group of program %q: %v", name, kerr)
		}
	}
	return err
}

// localGroup returns the process group of name's process when it is a
// child of supervisord on this host leading its own group (supervisord
// starts every program in a new group), and 0 otherwise.
func (d *Driver) localGroup(ctx context.Context, name string) int {
	p, err := d.rpc.getProcessInfo(ctx, name)
	if err != nil || p.PID <= 0 {
		return 0
	}
	var daemon int
	if err := d.rpc.call(ctx, "supervisor.getPID", &daemon); err != nil || daemon <= 0 {
		return 0
	}
	s, err := procfs.ReadStat(p.PID)
	if err != nil || s.PPid != daemon || s.PGrp != p.PID {
		return 0
	}
	return p.PID
}
