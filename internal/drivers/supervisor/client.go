package supervisor

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"

	"github.com/kolo/xmlrpc"
)

// maxReply bounds an XML-RPC reply body; log reads are the largest replies
// and are requested in bounded chunks.
const maxReply = 32 << 20

// rpc is supervisord's XML-RPC interface over an HTTP client of ours: the
// kolo/xmlrpc package is used only to encode calls and decode replies, so
// every call honours its context (deadline and cancellation), which the
// package's own client does not.
type rpc struct {
	hc       *http.Client
	endpoint string // the URL POSTed to
	username string
	password string
	target   string // what to name in errors: the socket path or the URL
}

// newRPC parses a supervisor.url: unix:///path/to/supervisor.sock, or
// http(s)://host:port[/RPC2] (the path defaults to /RPC2).
func newRPC(rawURL, username, password string) (*rpc, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("url %q: %w", rawURL, err)
	}
	r := &rpc{username: username, password: password}
	switch u.Scheme {
	case "unix":
		path := u.Path
		if u.Host != "" { // unix://relative/path is a mistake; say so
			return nil, fmt.Errorf("url %q: a unix socket URL is unix:///absolute/path", rawURL)
		}
		if path == "" {
			return nil, fmt.Errorf("url %q: no socket path", rawURL)
		}
		dialer := &net.Dialer{}
		r.hc = &http.Client{Transport: &http.Transport{
			// The dialer honours the request context's deadline.
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return dialer.DialContext(ctx, "unix", path)
			},
			MaxIdleConnsPerHost: 4,
		}}
		r.endpoint = "http://supervisor/RPC2"
		r.target = path
	case "http", "https":
		if u.Host == "" {
			return nil, fmt.Errorf("url %q: no host", rawURL)
		}
		if u.User != nil && r.username == "" {
			r.username = u.User.Username()
			r.password, _ = u.User.Password()
		}
		u.User = nil
		if u.Path == "" || u.Path == "/" {
			u.Path = "/RPC2"
		}
		r.hc = &http.Client{Transport: &http.Transport{
			DialContext:         (&net.Dialer{}).DialContext,
			MaxIdleConnsPerHost: 4,
		}}
		r.endpoint = u.String()
		r.target = r.endpoint
	default:
		return nil, fmt.Errorf("url %q: scheme must be unix, http or https", rawURL)
	}
	return r, nil
}

// call invokes method with args and decodes the reply into reply (a
// pointer; nil discards it). A supervisor fault is returned as *faultError,
// an HTTP error status as *httpError, a transport failure as *connError.
func (r *rpc) call(ctx context.Context, method string, reply any, args ...any) error {
	body, err := xmlrpc.EncodeMethodCall(method, args...)
	if err != nil {
		return fmt.Errorf("%s: encoding the call: %w", method, err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, r.endpoint, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("%s: %w", method, err)
	}
	req.Header.Set("Content-Type", "text/xml")
	if r.username != "" {
		req.SetBasicAuth(r.username, r.password)
	}
	resp, err := r.hc.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("%s: %w", method, ctx.Err())
		}
		return &connError{target: r.target, method: method, err: err}
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxReply+1))
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("%s: %w", method, ctx.Err())
		}
		return &connError{target: r.target, method: method, err: err}
	}
	if resp.StatusCode != http.StatusOK {
		return &httpError{method: method, status: resp.StatusCode, body: firstLine(data)}
	}
	if len(data) > maxReply {
		return fmt.Errorf("%s: reply larger than %d bytes", method, maxReply)
	}
	res := xmlrpc.Response(sanitizeXML(data))
	if err := res.Err(); err != nil {
		if f, ok := err.(xmlrpc.FaultError); ok {
			return &faultError{method: method, code: f.Code, msg: f.String}
		}
		return fmt.Errorf("%s: decoding the fault: %w", method, err)
	}
	if reply == nil {
		return nil
	}
	if err := res.Unmarshal(reply); err != nil {
		return fmt.Errorf("%s: decoding the reply: %w", method, err)
	}
	return nil
}

// sanitizeXML replaces the control characters XML 1.0 forbids with U+FFFD.
// supervisord's Python XML-RPC writes them unescaped when a program's log
// holds them (terminal colours, for one), which no XML parser accepts.
func sanitizeXML(b []byte) []byte {
	bad := func(c byte) bool { return c < 0x20 && c != '\t' && c != '\n' && c != '\r' }
	if !bytes.ContainsFunc(b, func(r rune) bool { return r < 0x80 && bad(byte(r)) }) {
		return b
	}
	out := make([]byte, 0, len(b)+64)
	for _, c := range b {
		if bad(c) {
			out = append(out, "\uFFFD"...)
			continue
		}
		out = append(out, c)
	}
	return out
}

func firstLine(b []byte) string {
	s := strings.TrimSpace(string(b))
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	if len(s) > 200 {
		s = s[:200]
	}
	return s
}

// The typed replies. Decoding into structs (not interface{}) keeps empty
// strings as "" (kolo/xmlrpc decodes <string></string> into a nil any).

// processInfo is getProcessInfo's and getAllProcessInfo's struct.
type processInfo struct {
	Name          string `xmlrpc:"name"`
	Group         string `xmlrpc:"group"`
	Description   string `xmlrpc:"description"`
	Start         int64  `xmlrpc:"start"`
	Stop          int64  `xmlrpc:"stop"`
	Now           int64  `xmlrpc:"now"`
	State         int    `xmlrpc:"state"`
	StateName     string `xmlrpc:"statename"`
	SpawnErr      string `xmlrpc:"spawnerr"`
	ExitStatus    int    `xmlrpc:"exitstatus"`
	StdoutLogfile string `xmlrpc:"stdout_logfile"`
	StderrLogfile string `xmlrpc:"stderr_logfile"`
	PID           int    `xmlrpc:"pid"`
}

// namespec is how supervisord addresses the process: "name" for a plain
// program, "group:name" inside a group.
func (p processInfo) namespec() string {
	if p.Group == p.Name || p.Group == "" {
		return p.Name
	}
	return p.Group + ":" + p.Name
}

// configInfo is one entry of getAllConfigInfo (the fields we use).
type configInfo struct {
	Name      string `xmlrpc:"name"`
	Group     string `xmlrpc:"group"`
	Command   string `xmlrpc:"command"`
	InUse     bool   `xmlrpc:"inuse"`
	ExitCodes []int  `xmlrpc:"exitcodes"`
	Autostart bool   `xmlrpc:"autostart"`
}

func (c configInfo) namespec() string {
	if c.Group == c.Name || c.Group == "" {
		return c.Name
	}
	return c.Group + ":" + c.Name
}

// supervisorState is getState's struct.
type supervisorState struct {
	Code int    `xmlrpc:"statecode"`
	Name string `xmlrpc:"statename"`
}

func (r *rpc) getState(ctx context.Context) (supervisorState, error) {
	var s supervisorState
	return s, r.call(ctx, "supervisor.getState", &s)
}

func (r *rpc) getProcessInfo(ctx context.Context, name string) (processInfo, error) {
	var p processInfo
	return p, r.call(ctx, "supervisor.getProcessInfo", &p, name)
}

func (r *rpc) getAllProcessInfo(ctx context.Context) ([]processInfo, error) {
	var ps []processInfo
	return ps, r.call(ctx, "supervisor.getAllProcessInfo", &ps)
}

func (r *rpc) getAllConfigInfo(ctx context.Context) ([]configInfo, error) {
	var cs []configInfo
	return cs, r.call(ctx, "supervisor.getAllConfigInfo", &cs)
}

// reloadConfig makes supervisord re-read its configuration and returns
// the groups added, changed and removed (it applies nothing by itself).
func (r *rpc) reloadConfig(ctx context.Context) (added, changed, removed []string, err error) {
	var res [][][]string
	if err := r.call(ctx, "supervisor.reloadConfig", &res); err != nil {
		return nil, nil, nil, err
	}
	if len(res) == 1 && len(res[0]) == 3 {
		return res[0][0], res[0][1], res[0][2], nil
	}
	return nil, nil, nil, fmt.Errorf("supervisor.reloadConfig: unexpected reply %v", res)
}

// tail is tailProcessStdoutLog/tailProcessStderrLog: the last length bytes
// before the end of the log, the log's size, and whether bytes were skipped.
func (r *rpc) tail(ctx context.Context, stream, name string, offset, length int64) (data string, size int64, overflow bool, err error) {
	method := "supervisor.tailProcessStdoutLog"
	if stream == "stderr" {
		method = "supervisor.tailProcessStderrLog"
	}
	// A heterogeneous array [string, int, bool]: decoded into []any, where
	// an empty string arrives as nil.
	var res []any
	if err := r.call(ctx, method, &res, name, offset, length); err != nil {
		return "", 0, false, err
	}
	if len(res) != 3 {
		return "", 0, false, fmt.Errorf("%s: unexpected reply %v", method, res)
	}
	data, _ = res[0].(string)
	switch n := res[1].(type) {
	case int64:
		size = n
	case int:
		size = int64(n)
	default:
		return "", 0, false, fmt.Errorf("%s: unexpected offset %T", method, res[1])
	}
	overflow, _ = res[2].(bool)
	return data, size, overflow, nil
}

// read is readProcessStdoutLog/readProcessStderrLog: length bytes from offset.
func (r *rpc) read(ctx context.Context, stream, name string, offset, length int64) (string, error) {
	method := "supervisor.readProcessStdoutLog"
	if stream == "stderr" {
		method = "supervisor.readProcessStderrLog"
	}
	var s string
	return s, r.call(ctx, method, &s, name, offset, length)
}
