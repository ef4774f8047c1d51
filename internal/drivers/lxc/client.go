package lxc

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"
)

// client speaks the LXD/Incus REST API (the same on both) over a unix
// socket or HTTPS. It knows the envelope (sync, async, error), waits for
// operations, and nothing about instances.
type client struct {
	http    *http.Client
	base    string // "http://unix.socket" or "https://host:8443"
	project string
}

// envelope is every response of the API.
type envelope struct {
	Type       string          `json:"type"` // sync, async, error
	Status     string          `json:"status"`
	StatusCode int             `json:"status_code"`
	Operation  string          `json:"operation"`
	ErrorCode  int             `json:"error_code"`
	Error      string          `json:"error"`
	Metadata   json.RawMessage `json:"metadata"`
}

// operation is a background operation (task) of the server.
type operation struct {
	ID         string              `json:"id"`
	Class      string              `json:"class"`
	Desc       string              `json:"description"`
	Status     string              `json:"status"`
	StatusCode int                 `json:"status_code"`
	Err        string              `json:"err"`
	MayCancel  bool                `json:"may_cancel"`
	Metadata   map[string]any      `json:"metadata"`
	Resources  map[string][]string `json:"resources"`
}

// Operation status codes (shared/api/status_code.go upstream).
const (
	opRunning = 103
	opSuccess = 200
	opFailure = 400
	opCancel  = 401
)

// apiError is an error response of the API: a status code and message.
type apiError struct {
	Status int
	Msg    string
	Method string
	Path   string
}

func (e *apiError) Error() string {
	return fmt.Sprintf("lxd: %s %s: %s (%d)", e.Method, e.Path, e.Msg, e.Status)
}

// opError is a background operation that ended in failure.
type opError struct {
	Desc string
	Msg  string
}

func (e *opError) Error() string { return fmt.Sprintf("lxd: %s: %s", e.Desc, e.Msg) }

// connError is a failure to reach the server at all.
type connError struct{ Err error }

func (e *connError) Error() string { return "lxd: unreachable: " + e.Err.Error() }
func (e *connError) Unwrap() error { return e.Err }

// socketCandidates are the local sockets tried in order when none is
// configured: Incus first, then the snap and distribution LXD.
func socketCandidates() []string {
	var out []string
	if s := os.Getenv("INCUS_SOCKET"); s != "" {
		out = append(out, s)
	}
	if s := os.Getenv("LXD_SOCKET"); s != "" {
		out = append(out, s)
	}
	if d := os.Getenv("LXD_DIR"); d != "" {
		out = append(out, d+"/unix.socket")
	}
	return append(out,
		"/var/lib/incus/unix.socket",
		"/run/incus/unix.socket",
		"/var/snap/lxd/common/lxd/unix.socket",
		"/var/lib/lxd/unix.socket",
	)
}

// findSocket returns the first candidate socket that exists.
func findSocket() (string, error) {
	for _, p := range socketCandidates() {
		if fi, err := os.Stat(p); err == nil && fi.Mode()&os.ModeSocket != 0 {
			return p, nil
		}
	}
	return "", &connError{Err: fmt.Errorf("no LXD or Incus socket found (tried %s)", strings.Join(socketCandidates(), ", "))}
}

// newClient builds a client from the options; it does not connect.
func newClient(o Options) (*client, error) {
	if o.URL != "" {
		u, err := url.Parse(o.URL)
		if err != nil || u.Scheme != "https" || u.Host == "" {
			return nil, fmt.Errorf("lxc.url: %q is not an https:// URL", o.URL)
		}
		tc, err := tlsConfig(o)
		if err != nil {
			return nil, err
		}
		tr := &http.Transport{TLSClientConfig: tc, Proxy: nil, IdleConnTimeout: 90 * time.Second}
		return &client{http: &http.Client{Transport: tr}, base: "https://" + u.Host, project: o.Project}, nil
	}
	sock := o.Socket
	if sock == "" {
		var err error
		if sock, err = findSocket(); err != nil {
			return nil, err
		}
	}
	d := net.Dialer{Timeout: 5 * time.Second}
	// No keep-alive on the unix socket: LXD 5.0 peeks at the first bytes
	// of each new connection inside its accept loop, so a connection that
	// is open but has sent nothing stops LXD from accepting any other
	// until it closes. Go's transport makes exactly such connections when
	// it dials for a request that is then served by another connection or
	// cancelled: it parks the fresh connection in its idle pool (for
	// IdleConnTimeout, 90s). Without keep-alives every connection carries
	// its request at once and is closed after it; over a local socket a
	// dial per request costs little. See docs/lxc.md, "Tests".
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return d.DialContext(ctx, "unix", sock)
		},
		DisableKeepAlives: true,
	}
	return &client{http: &http.Client{Transport: tr}, base: "http://unix.socket", project: o.Project}, nil
}

// tlsConfig presents the client certificate and trusts exactly the pinned
// server certificate (LXD servers use self-signed certificates).
func tlsConfig(o Options) (*tls.Config, error) {
	if o.TLSClientCert == "" || o.TLSClientKey == "" || o.ServerCert == "" {
		return nil, errors.New("lxc.url needs lxc.tls_client_cert, lxc.tls_client_key and lxc.server_cert")
	}
	cert, err := tls.LoadX509KeyPair(o.TLSClientCert, o.TLSClientKey)
	if err != nil {
		return nil, fmt.Errorf("lxc.tls_client_cert: %w", err)
	}
	pemBytes, err := os.ReadFile(o.ServerCert)
	if err != nil {
		return nil, fmt.Errorf("lxc.server_cert: %w", err)
	}
	blk, _ := pem.Decode(pemBytes)
	if blk == nil {
		return nil, fmt.Errorf("lxc.server_cert: %s holds no PEM certificate", o.ServerCert)
	}
	pinned := blk.Bytes
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		MinVersion:   tls.VersionTLS12,
		// The server certificate is self-signed: instead of a CA chain we
		// accept exactly the pinned certificate.
		InsecureSkipVerify: true,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			if len(raw) == 0 || !bytes.Equal(raw[0], pinned) {
				return errors.New("lxd: server certificate does not match lxc.server_cert")
			}
			return nil
		},
	}, nil
}

// url returns the full URL of an API path, adding the project.
func (c *client) url(path string) string {
	if c.project == "" || strings.Contains(path, "project=") {
		return c.base + path
	}
	sep := "?"
	if strings.Contains(path, "?") {
		sep = "&"
	}
	return c.base + path + sep + "project=" + url.QueryEscape(c.project)
}

// raw sends a request and returns the open response. Transport failures
// are connError unless ctx ended (then ctx's error is returned).
func (c *client) raw(ctx context.Context, method, path string, body any, hdr http.Header) (*http.Response, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.url(path), rd)
	if err != nil {
		return nil, err
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, &connError{Err: err}
	}
	return resp, nil
}

// do sends a request and decodes the envelope. An error envelope (or an
// HTTP error status) is an *apiError.
func (c *client) do(ctx context.Context, method, path string, body any, hdr http.Header) (*envelope, http.Header, error) {
	resp, err := c.raw(ctx, method, path, body, hdr)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		if ctx.Err() != nil {
			return nil, nil, ctx.Err()
		}
		return nil, nil, &connError{Err: err}
	}
	var env envelope
	if err := json.Unmarshal(b, &env); err != nil {
		if resp.StatusCode >= 400 {
			return nil, nil, &apiError{Status: resp.StatusCode, Msg: strings.TrimSpace(string(b)), Method: method, Path: path}
		}
		return nil, nil, fmt.Errorf("lxd: %s %s: bad response: %w", method, path, err)
	}
	if env.Type == "error" || resp.StatusCode >= 400 {
		code := env.ErrorCode
		if code == 0 {
			code = resp.StatusCode
		}
		return nil, nil, &apiError{Status: code, Msg: env.Error, Method: method, Path: path}
	}
	return &env, resp.Header, nil
}

// query does a synchronous request and decodes its metadata into out
// (which may be nil). It returns the response's ETag.
func (c *client) query(ctx context.Context, method, path string, body, out any) (string, error) {
	return c.queryHdr(ctx, method, path, body, nil, out)
}

func (c *client) queryHdr(ctx context.Context, method, path string, body any, hdr http.Header, out any) (string, error) {
	env, h, err := c.do(ctx, method, path, body, hdr)
	if err != nil {
		return "", err
	}
	if out != nil && len(env.Metadata) > 0 && string(env.Metadata) != "null" {
		if err := json.Unmarshal(env.Metadata, out); err != nil {
			return "", fmt.Errorf("lxd: %s %s: decoding: %w", method, path, err)
		}
	}
	return h.Get("ETag"), nil
}

// start sends a request that creates a background operation and returns
// it without waiting. A synchronous answer is returned as a finished op.
func (c *client) start(ctx context.Context, method, path string, body any, hdr http.Header) (*operation, error) {
	env, _, err := c.do(ctx, method, path, body, hdr)
	if err != nil {
		return nil, err
	}
	if env.Type != "async" {
		return &operation{Status: "Success", StatusCode: opSuccess}, nil
	}
	var op operation
	if err := json.Unmarshal(env.Metadata, &op); err != nil {
		return nil, fmt.Errorf("lxd: %s %s: decoding operation: %w", method, path, err)
	}
	if op.ID == "" {
		op.ID = strings.TrimPrefix(env.Operation, "/1.0/operations/")
	}
	return &op, nil
}

// async sends a request creating an operation and waits for it under ctx.
func (c *client) async(ctx context.Context, method, path string, body any, hdr http.Header) (*operation, error) {
	op, err := c.start(ctx, method, path, body, hdr)
	if err != nil {
		return nil, err
	}
	return c.wait(ctx, op)
}

// wait waits until op is done or ctx ends. When ctx ends first the
// operation is cancelled on the server if it may be, and ctx's error is
// returned. A failed operation is an *opError.
func (c *client) wait(ctx context.Context, op *operation) (*operation, error) {
	for op.StatusCode == opRunning || op.StatusCode < opSuccess {
		if op.ID == "" {
			break
		}
		secs := 30
		if dl, ok := ctx.Deadline(); ok {
			secs = int(math.Ceil(time.Until(dl).Seconds()))
			secs = max(1, min(secs, 30))
		}
		var next operation
		_, err := c.query(ctx, http.MethodGet, fmt.Sprintf("/1.0/operations/%s/wait?timeout=%d", op.ID, secs), nil, &next)
		if err != nil {
			if ctx.Err() != nil {
				c.cancel(op)
				return op, ctx.Err()
			}
			return op, err
		}
		*op = next
	}
	switch op.StatusCode {
	case opSuccess, 0:
		return op, nil
	case opCancel:
		return op, &opError{Desc: op.Desc, Msg: "cancelled: " + op.Err}
	default:
		return op, &opError{Desc: op.Desc, Msg: op.Err}
	}
}

// cancel asks the server to cancel op where it may be cancelled. It runs
// after the caller's ctx ended, so it uses its own short deadline.
func (c *client) cancel(op *operation) {
	if op == nil || op.ID == "" || !op.MayCancel {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, _ = c.query(ctx, http.MethodDelete, "/1.0/operations/"+op.ID, nil, nil)
}

// file fetches a raw (non-JSON) body such as the console log or an exec
// output file.
func (c *client) file(ctx context.Context, path string, limit int64) ([]byte, error) {
	resp, err := c.raw(ctx, http.MethodGet, path, nil, nil)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, limit))
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, &connError{Err: err}
	}
	if resp.StatusCode >= 400 {
		var env envelope
		msg := strings.TrimSpace(string(b))
		if json.Unmarshal(b, &env) == nil && env.Error != "" {
			msg = env.Error
		}
		return nil, &apiError{Status: resp.StatusCode, Msg: msg, Method: http.MethodGet, Path: path}
	}
	return b, nil
}

// esc escapes one path segment.
func esc(s string) string { return url.PathEscape(s) }
