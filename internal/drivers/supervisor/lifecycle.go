package supervisor

import (
	"context"
	"errors"
	"fmt"
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

// untilRunning is a wait condition: RUNNING, or an error once supervisord
// has given up (FATAL) or the program exited.
func untilRunning(p processInfo) (bool, error) {
	switch p.StateName {
	case "RUNNING":
		return true, nil
	case "FATAL":
		return false, drivers.Errorf(drivers.Internal, "program %q failed to start (FATAL): %s", p.namespec(), p.SpawnErr)
	case "EXITED", "STOPPED":
		return false, drivers.Errorf(drivers.Internal, "program %q exited while starting (%s, exit status %d)", p.namespec(), p.StateName, p.ExitStatus)
	}
	return false, nil
}

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
		return false, err
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
	return changed, err
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
