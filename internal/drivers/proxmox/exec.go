package proxmox

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/subbus/subbus/internal/drivers"
)

// execStatus is GET …/agent/exec-status.
type execStatus struct {
	Exited   num    `json:"exited"`
	ExitCode num    `json:"exitcode"`
	OutData  string `json:"out-data"`
	ErrData  string `json:"err-data"`
	Signal   num    `json:"signal"`
}

// Exec runs a command in a QEMU VM through the guest agent (agent/exec,
// then agent/exec-status until it has exited) and writes its output when
// it ends: the agent returns output only then. Env and WorkDir are applied
// by running the command under `/bin/sh -c 'cd DIR && exec env K=V "$@"'`
// (a POSIX shell in the guest is needed for them); User is unsupported
// (the agent runs commands as itself). LXC containers have no exec in the
// PVE API: unsupported.
func (d *Driver) Exec(ctx context.Context, name string, req drivers.ExecRequest, stdout, stderr drivers.Writer) (int, error) {
	r, err := d.find(ctx, name)
	if err != nil {
		return -1, err
	}
	if r.Type == kindLXC {
		return -1, drivers.Unsupportedf("proxmox: exec in container %s: the PVE API has no exec for LXC containers (only `pct exec` on the node)", name)
	}
	if req.User != "" {
		return -1, drivers.Unsupportedf("proxmox: exec: user: the guest agent runs commands as its own user")
	}
	if len(req.Command) == 0 {
		return -1, drivers.Errorf(drivers.InvalidArgument, "proxmox: exec: no command")
	}
	if r.state() != drivers.StateRunning {
		return -1, drivers.Errorf(drivers.Conflict, "proxmox: exec in %s: the guest is %s", name, r.state())
	}
	c, err := d.client()
	if err != nil {
		return -1, err
	}
	params := map[string]any{"command": execCommand(req)}
	if len(req.Stdin) > 0 {
		params["input-data"] = string(req.Stdin)
	}
	var started struct {
		PID num `json:"pid"`
	}
	if err := c.Post(ctx, r.path()+"/agent/exec", params, &started); err != nil {
		return -1, fmt.Errorf("proxmox: exec in %s: %w", name, err)
	}
	pid := strconv.Itoa(int(started.PID))
	delay := 100 * time.Millisecond
	for {
		var st execStatus
		if err := c.Get(ctx, r.path()+"/agent/exec-status?pid="+pid, &st); err != nil {
			return -1, fmt.Errorf("proxmox: exec in %s: status of pid %s: %w", name, pid, err)
		}
		if st.Exited == 1 {
			if _, err := stdout.Write([]byte(st.OutData)); err != nil {
				return -1, err
			}
			if _, err := stderr.Write([]byte(st.ErrData)); err != nil {
				return -1, err
			}
			if st.Signal != 0 && st.ExitCode == 0 {
				return 128 + int(st.Signal), nil
			}
			return int(st.ExitCode), nil
		}
		select {
		case <-ctx.Done():
			return -1, fmt.Errorf("proxmox: exec in %s: %w", name, ctx.Err())
		case <-time.After(delay):
		}
		delay = min(delay*2, time.Second)
	}
}

// execCommand is the argv sent to the agent: the command itself, or a
// shell wrapper that applies WorkDir and Env.
func execCommand(req drivers.ExecRequest) []string {
	if len(req.Env) == 0 && req.WorkDir == "" {
		return req.Command
	}
	script := `exec env "$@"`
	args := []string{}
	if req.WorkDir != "" {
		script = `cd "$1" || exit 126; shift; ` + script
		args = append(args, req.WorkDir)
	}
	keys := make([]string, 0, len(req.Env))
	for k := range req.Env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		args = append(args, k+"="+req.Env[k])
	}
	if len(req.Command) > 0 && strings.Contains(req.Command[0], "=") {
		args = append(args, "--") // env would take it for a variable
	}
	out := append([]string{"/bin/sh", "-c", script, "sh"}, args...)
	return append(out, req.Command...)
}
