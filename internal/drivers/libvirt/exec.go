package libvirt

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"sort"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"

	"github.com/subbus/subbus/internal/drivers"
)

// defaultPath is the PATH of commands run through the agent when neither
// the instance nor the request sets one (guest-exec with an environment
// replaces the agent's whole environment).
const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// agentTimeout is how long libvirt waits for one agent reply (seconds).
const agentTimeout = 10

// agentCommand runs one guest-agent command and returns its "return" value.
func (d *Driver) agentCommand(ctx context.Context, l *golibvirt.Libvirt, dom golibvirt.Domain, execute string, args any) (json.RawMessage, error) {
	cmd := map[string]any{"execute": execute}
	if args != nil {
		cmd["arguments"] = args
	}
	b, err := json.Marshal(cmd)
	if err != nil {
		return nil, err
	}
	out, err := call(ctx, func() (golibvirt.OptString, error) {
		return l.QEMUDomainAgentCommand(dom, string(b), agentTimeout, 0)
	})
	if err != nil {
		return nil, fmt.Errorf("guest agent %s in domain %s: %w", execute, dom.Name, err)
	}
	if len(out) == 0 {
		return nil, nil
	}
	var resp struct {
		Return json.RawMessage `json:"return"`
		Error  *agentError     `json:"error"`
	}
	if err := json.Unmarshal([]byte(out[0]), &resp); err != nil {
		return nil, fmt.Errorf("guest agent %s in domain %s: unparsable reply %q: %w", execute, dom.Name, out[0], err)
	}
	if resp.Error != nil {
		return nil, fmt.Errorf("%s in domain %s: %w", execute, dom.Name, resp.Error)
	}
	return resp.Return, nil
}

// UnmarshalJSON reads the agent's {"class":…,"desc":…}.
func (e *agentError) UnmarshalJSON(b []byte) error {
	var v struct {
		Class string `json:"class"`
		Desc  string `json:"desc"`
	}
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	e.Class, e.Desc = v.Class, v.Desc
	return nil
}

// Exec runs a command through the QEMU guest agent: guest-sync, then
// guest-exec with the captured output, then guest-exec-status until the
// command exits. The environment is the instance's template environment
// plus req.Env (and a default PATH); WorkDir runs the command through
// `/bin/sh -c 'cd …'`, so it needs a shell in the guest; User is
// Unsupported (the agent runs commands as itself). Output is written when
// the command has exited (the agent returns it then). When ctx ends, Exec
// returns Timeout and the command keeps running in the guest.
// A domain without an agent channel is Unsupported; one whose agent is not
// connected (not installed, not started yet) is Unavailable.
func (d *Driver) Exec(ctx context.Context, name string, req drivers.ExecRequest, stdout, stderr drivers.Writer) (int, error) {
	if len(req.Command) == 0 {
		return 0, drivers.Errorf(drivers.InvalidArgument, "command: required")
	}
	if req.User != "" {
		return 0, drivers.Unsupportedf("user: the guest agent runs commands as its own user")
	}
	l, x, err := d.get(ctx, name)
	if err != nil {
		return 0, err
	}
	if !active(x.state) {
		return 0, drivers.Errorf(drivers.Conflict, "domain %s is %s", name, nativeWord(x.state))
	}
	present, connected := hasAgentChannel(x.def)
	if !present {
		return 0, drivers.Unsupportedf("domain %s has no guest agent channel (%s)", name, agentChannel)
	}
	if !connected {
		if err := d.waitAgent(ctx, l, x.dom); err != nil {
			return 0, err
		}
	}
	id := rand.Int64N(1 << 40)
	ret, err := d.agentCommand(ctx, l, x.dom, "guest-sync", map[string]any{"id": id})
	if err != nil {
		return 0, err
	}
	var got int64
	if err := json.Unmarshal(ret, &got); err != nil || got != id {
		return 0, drivers.Errorf(drivers.Conflict, "guest-sync in domain %s: the agent answered %s, want %d (out of sync)", name, ret, id)
	}

	argv := req.Command
	if req.WorkDir != "" {
		argv = append([]string{"/bin/sh", "-c", `cd "$1" && shift && exec "$@"`, "sh", req.WorkDir}, argv...)
	}
	env := map[string]string{"PATH": defaultPath}
	if x.owner != nil {
		for k, v := range fromKeyVals(x.owner.Env) {
			env[k] = v
		}
	}
	for k, v := range req.Env {
		env[k] = v
	}
	envList := make([]string, 0, len(env))
	for k, v := range env {
		envList = append(envList, k+"="+v)
	}
	sort.Strings(envList)
	args := map[string]any{"path": argv[0], "arg": argv[1:], "env": envList, "capture-output": true}
	if len(req.Stdin) > 0 {
		args["input-data"] = base64.StdEncoding.EncodeToString(req.Stdin)
	}
	ret, err = d.agentCommand(ctx, l, x.dom, "guest-exec", args)
	if err != nil {
		return 0, err
	}
	var started struct {
		PID int64 `json:"pid"`
	}
	if err := json.Unmarshal(ret, &started); err != nil {
		return 0, fmt.Errorf("guest-exec in domain %s: unparsable reply %s: %w", name, ret, err)
	}
	wait := 50 * time.Millisecond
	for {
		ret, err := d.agentCommand(ctx, l, x.dom, "guest-exec-status", map[string]any{"pid": started.PID})
		if err != nil {
			return 0, err
		}
		var st struct {
			Exited   bool   `json:"exited"`
			ExitCode *int   `json:"exitcode"`
			Signal   *int   `json:"signal"`
			OutData  string `json:"out-data"`
			ErrData  string `json:"err-data"`
		}
		if err := json.Unmarshal(ret, &st); err != nil {
			return 0, fmt.Errorf("guest-exec-status in domain %s: unparsable reply %s: %w", name, ret, err)
		}
		if st.Exited {
			for _, p := range []struct {
				data string
				w    drivers.Writer
			}{{st.OutData, stdout}, {st.ErrData, stderr}} {
				if p.data == "" {
					continue
				}
				b, err := base64.StdEncoding.DecodeString(p.data)
				if err != nil {
					return 0, fmt.Errorf("guest-exec-status in domain %s: output is not base64: %w", name, err)
				}
				if _, err := p.w.Write(b); err != nil {
					return 0, err
				}
			}
			switch {
			case st.ExitCode != nil:
				return *st.ExitCode, nil
			case st.Signal != nil:
				return 128 + *st.Signal, nil
			}
			return 0, nil
		}
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("command %d in domain %s still running: %w", started.PID, name, ctx.Err())
		case <-time.After(wait):
		}
		wait = min(2*wait, 500*time.Millisecond)
	}
}

// waitAgent waits (at most AgentWait) until the domain's live definition
// shows its agent channel connected. Past that, the agent call itself
// reports that the agent is not connected (Conflict).
func (d *Driver) waitAgent(ctx context.Context, l *golibvirt.Libvirt, dom golibvirt.Domain) error {
	deadline := time.Now().Add(time.Duration(d.opts.AgentWait))
	for time.Now().Before(deadline) {
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for the guest agent of domain %s to connect: %w", dom.Name, ctx.Err())
		case <-time.After(250 * time.Millisecond):
		}
		x, err := d.load(ctx, l, dom, 0)
		if err != nil {
			return err
		}
		if !active(x.state) {
			return drivers.Errorf(drivers.Conflict, "domain %s is %s", dom.Name, nativeWord(x.state))
		}
		if _, connected := hasAgentChannel(x.def); connected {
			return nil
		}
	}
	return nil
}
