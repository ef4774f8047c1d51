package lxc

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/subbus/subbus/internal/drivers"
)

// execBody is POST /1.0/instances/<name>/exec in record-output mode: no
// websockets, the server writes stdout and stderr to log files.
type execBody struct {
	Command          []string          `json:"command"`
	Environment      map[string]string `json:"environment,omitempty"`
	WaitForWebsocket bool              `json:"wait-for-websocket"`
	Interactive      bool              `json:"interactive"`
	RecordOutput     bool              `json:"record-output"`
	User             uint32            `json:"user,omitempty"`
	Group            uint32            `json:"group,omitempty"`
	Cwd              string            `json:"cwd,omitempty"`
}

// maxExecOutput bounds what is read of each recorded output file.
const maxExecOutput = 64 << 20

// Exec runs a command with recorded output: it waits for the operation,
// takes the exit code from metadata.return, then fetches stdout and stderr
// from the paths metadata.output names (used verbatim: LXD and Incus put
// them in different places) and deletes them. Output is therefore written
// when the command has finished, not as it is produced. A request with
// Stdin runs over the exec websockets instead (see execStreams).
func (d *Driver) Exec(ctx context.Context, name string, req drivers.ExecRequest, stdout, stderr drivers.Writer) (int, error) {
	c, _, err := d.conn()
	if err != nil {
		return -1, err
	}
	in, _, err := d.get(ctx, name)
	if err != nil {
		return -1, err
	}
	if st := normState(in.StatusCode, in.Status); st != drivers.StateRunning {
		return -1, drivers.Errorf(drivers.Conflict, "lxc: exec: instance %q is %s", name, st)
	}
	body := execBody{Command: req.Command, Environment: req.Env, RecordOutput: true, Cwd: req.WorkDir}
	if req.User != "" {
		uid, gid, err := d.lookupUser(ctx, c, name, req.User)
		if err != nil {
			return -1, err
		}
		body.User, body.Group = uid, gid
	}
	if len(req.Stdin) > 0 {
		return d.execStreams(ctx, c, name, body, req.Stdin, stdout, stderr)
	}
	op, err := c.async(ctx, http.MethodPost, "/1.0/instances/"+esc(name)+"/exec", body, nil)
	if err != nil {
		return -1, err
	}
	code := -1
	if v, ok := op.Metadata["return"].(float64); ok {
		code = int(v)
	}
	outputs, _ := op.Metadata["output"].(map[string]any)
	for _, fd := range []struct {
		key string
		w   drivers.Writer
	}{{"1", stdout}, {"2", stderr}} {
		p, _ := outputs[fd.key].(string)
		if p == "" {
			continue
		}
		p = outputPath(p)
		b, err := c.file(ctx, p, maxExecOutput)
		if err != nil {
			return code, err
		}
		if len(b) > 0 {
			if _, err := fd.w.Write(b); err != nil {
				return code, err
			}
		}
		_, _ = c.query(ctx, http.MethodDelete, p, nil, nil)
	}
	return code, nil
}

// outputPath keeps the server's path but drops a project it already
// carries in its query, so the client adds its own exactly once.
func outputPath(p string) string {
	u, err := url.Parse(p)
	if err != nil {
		return p
	}
	q := u.Query()
	q.Del("project")
	u.RawQuery = q.Encode()
	return u.String()
}

// lookupUser resolves a user name (or a numeric uid[:gid]) against the
// container's /etc/passwd, read through the files API.
func (d *Driver) lookupUser(ctx context.Context, c *client, name, user string) (uint32, uint32, error) {
	u, g, hasGroup := strings.Cut(user, ":")
	if uid, err := strconv.ParseUint(u, 10, 32); err == nil {
		gid := uid
		if hasGroup {
			n, err := strconv.ParseUint(g, 10, 32)
			if err != nil {
				return 0, 0, drivers.Errorf(drivers.InvalidArgument, "lxc: exec: user: bad group %q", g)
			}
			gid = n
		}
		return uint32(uid), uint32(gid), nil
	}
	b, err := c.file(ctx, "/1.0/instances/"+esc(name)+"/files?path="+url.QueryEscape("/etc/passwd"), 4<<20)
	if err != nil {
		return 0, 0, fmt.Errorf("lxc: exec: reading /etc/passwd to resolve user %q: %w", u, err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Split(line, ":")
		if len(f) >= 4 && f[0] == u {
			uid, err1 := strconv.ParseUint(f[2], 10, 32)
			gid, err2 := strconv.ParseUint(f[3], 10, 32)
			if err1 == nil && err2 == nil {
				return uint32(uid), uint32(gid), nil
			}
		}
	}
	return 0, 0, drivers.Errorf(drivers.InvalidArgument, "lxc: exec: user %q not found in the container's /etc/passwd", u)
}
