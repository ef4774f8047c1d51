package process

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/subbus/subbus/internal/drivers"
)

// execWaitDelay is how long Exec waits for output after the command
// exited (or ctx ended) when a background child still holds the pipes.
const execWaitDelay = 2 * time.Second

// Exec runs a command with the instance's environment (overlaid with
// req.Env), in req.WorkDir or the instance's working directory, as the
// instance's user unless req.User is given, and, when the instance has
// limits, in its cgroup. The instance must be running (else Conflict).
// A command that cannot be found is NotFound naming it; a command killed
// by a signal exits 128+signal, as in a shell.
func (d *Driver) Exec(ctx context.Context, name string, req drivers.ExecRequest, stdout, stderr drivers.Writer) (int, error) {
	if len(req.Command) == 0 || req.Command[0] == "" {
		return -1, drivers.Errorf(drivers.InvalidArgument, "command: must not be empty")
	}
	d.mu.Lock()
	in, err := d.lookup(name)
	if err != nil {
		d.mu.Unlock()
		return -1, err
	}
	if in.rec.State != drivers.StateRunning {
		d.mu.Unlock()
		return -1, drivers.Errorf(drivers.Conflict, "instance %q is %s, not running", name, in.rec.State)
	}
	t := copyTemplate(in.rec.Template)
	id, limited := in.rec.ID, !in.rec.Limits.IsZero() && d.cg != nil
	d.mu.Unlock()

	env := envOf(t, req.Env)
	dir := workDirOf(t)
	if req.WorkDir != "" {
		if !filepath.IsAbs(req.WorkDir) {
			return -1, drivers.Errorf(drivers.InvalidArgument, "workdir: %q must be an absolute path", req.WorkDir)
		}
		dir = req.WorkDir
	}
	if st, err := os.Stat(dir); err != nil || !st.IsDir() {
		return -1, drivers.Errorf(drivers.NotFound, "workdir: %q is not a directory", dir)
	}
	path, err := resolveExecutable(req.Command[0], env, dir)
	if err != nil {
		return -1, err
	}
	args := req.Command
	cmd := exec.Command(path)
	cmd.Env = env
	cmd.Dir = dir
	cmd.Stdout = stdout
	cmd.Stderr = stderr
	if len(req.Stdin) > 0 {
		cmd.Stdin = bytes.NewReader(req.Stdin)
	}
	cmd.WaitDelay = execWaitDelay
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	user := t.User
	if req.User != "" {
		user = req.User
	}
	cred, err := d.runAs(user)
	if err != nil {
		return -1, err
	}
	cmd.SysProcAttr.Credential = cred
	if limited {
		var done func()
		path, args, done, err = d.cg.enter(id, cmd.SysProcAttr, path, args)
		if err != nil {
			return -1, err
		}
		defer done()
		cmd.Path = path
	}
	cmd.Args = args
	if err := cmd.Start(); err != nil {
		return -1, startErr(req.Command[0], err)
	}
	if limited {
		_ = d.cg.addTree(id, cmd.Process.Pid)
	}
	// End the whole process group when ctx ends.
	waited := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		case <-waited:
		}
	}()
	err = cmd.Wait()
	close(waited)
	if ctx.Err() != nil {
		return -1, fmt.Errorf("exec in %s: %w", name, ctx.Err())
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return 128 + int(ws.Signal()), nil
		}
		return ee.ExitCode(), nil
	}
	if errors.Is(err, exec.ErrWaitDelay) {
		return cmd.ProcessState.ExitCode(), nil
	}
	if err != nil {
		return -1, fmt.Errorf("exec in %s: %w", name, err)
	}
	return 0, nil
}
