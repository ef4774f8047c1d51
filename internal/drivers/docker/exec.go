package docker

import (
	"context"
	"fmt"
	"io"
	"sort"
	"time"

	"github.com/moby/moby/api/pkg/stdcopy"
	"github.com/moby/moby/client"

	"github.com/subbus/subbus/internal/drivers"
)

// Exec implements drivers.Execer. Output is demultiplexed into stdout and
// stderr and written as it arrives; the exit code comes from
// ExecInspect, polled until the daemon has recorded it.
func (d *Driver) Exec(ctx context.Context, name string, req drivers.ExecRequest, stdout, stderr drivers.Writer) (int, error) {
	if len(req.Command) == 0 {
		return 0, drivers.Errorf(drivers.InvalidArgument, "exec %s: command is empty", name)
	}
	ins, err := d.inspect(ctx, name)
	if err != nil {
		return 0, err
	}
	if ins.State == nil || !ins.State.Running || ins.State.Paused {
		return 0, drivers.Errorf(drivers.Conflict, "exec %s: the container is not running", name)
	}
	c, err := d.client()
	if err != nil {
		return 0, err
	}
	env := make([]string, 0, len(req.Env))
	for k, v := range req.Env {
		env = append(env, k+"="+v)
	}
	sort.Strings(env)
	ex, err := c.ExecCreate(ctx, ins.ID, client.ExecCreateOptions{
		Cmd:          req.Command,
		Env:          env,
		WorkingDir:   req.WorkDir,
		User:         req.User,
		AttachStdin:  len(req.Stdin) > 0,
		AttachStdout: true,
		AttachStderr: true,
	})
	if err != nil {
		return 0, fmt.Errorf("exec in %s: %w", name, err)
	}
	att, err := c.ExecAttach(ctx, ex.ID, client.ExecAttachOptions{})
	if err != nil {
		return 0, fmt.Errorf("exec in %s: %w", name, err)
	}
	defer att.Close()
	// The hijacked connection ignores ctx: close it when ctx ends.
	stop := context.AfterFunc(ctx, func() { att.Close() })
	defer stop()

	if len(req.Stdin) > 0 {
		go func() {
			_, _ = att.Conn.Write(req.Stdin)
			_ = att.CloseWrite()
		}()
	}
	if _, err := stdcopy.StdCopy(writerOf(stdout), writerOf(stderr), att.Reader); err != nil {
		if ctx.Err() != nil {
			return 0, fmt.Errorf("exec in %s: %w", name, ctx.Err())
		}
		return 0, fmt.Errorf("exec in %s: read output: %w", name, err)
	}
	// The exit code is recorded shortly after the stream ends.
	for delay := time.Millisecond; ; delay = min(2*delay, 50*time.Millisecond) {
		st, err := c.ExecInspect(ctx, ex.ID, client.ExecInspectOptions{})
		if err != nil {
			return 0, fmt.Errorf("exec in %s: inspect: %w", name, err)
		}
		if !st.Running {
			return st.ExitCode, nil
		}
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("exec in %s: %w", name, ctx.Err())
		case <-time.After(delay):
		}
	}
}

// writerOf adapts a drivers.Writer (never nil per the contract).
func writerOf(w drivers.Writer) io.Writer {
	if w == nil {
		return io.Discard
	}
	return w
}
