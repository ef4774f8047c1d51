package pvesim

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// APIError is an error answer: Status and Message (PVE puts the message's
// first line in the HTTP reason phrase) and, for 400, per-parameter Errors.
type APIError struct {
	Status  int
	Message string
	Errors  map[string]string
}

func (e *APIError) Error() string { return fmt.Sprintf("%d %s", e.Status, firstLine(e.Message)) }

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	return strings.TrimRight(s, "\r")
}

func paramError(errs map[string]string) *APIError {
	return &APIError{Status: 400, Message: "Parameter verification failed.\n", Errors: errs}
}

// errf is a plain handler error: PVE answers it with 500 and the message.
func errf(format string, args ...any) error { return fmt.Errorf(format, args...) }

// Request is one recorded API request (see Sim.Requests).
type Request struct {
	Method   string
	Path     string // relative to /api2/json
	Template string // the schema path it matched ("" if none)
	Params   map[string]any
	Status   int
	User     string
}

// Requests returns the requests served so far (at most the last 10000).
func (s *Sim) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Request(nil), s.reqlog...)
}

func (s *Sim) record(r Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.reqlog) >= 10000 {
		s.reqlog = s.reqlog[1:]
	}
	s.reqlog = append(s.reqlog, r)
}

// identity is the authenticated caller.
type identity struct {
	user       string // "root@pam" or "root@pam!token"
	token      bool
	restricted bool // a privilege-separated token without ACLs
}

type req struct {
	ctx                    context.Context
	method, path, template string
	params                 map[string]any
	binds                  map[string]string
	id                     identity
	m                      *Method
}

func (r *req) str(k string) string {
	if v, ok := r.params[k]; ok {
		s, _ := scalarString(v)
		return s
	}
	return ""
}

func (r *req) has(k string) bool { _, ok := r.params[k]; return ok }

func (r *req) int(k string, def int64) int64 {
	if !r.has(k) {
		return def
	}
	v, err := strconv.ParseInt(r.str(k), 10, 64)
	if err != nil {
		return def
	}
	return v
}

func (r *req) bool(k string) bool { return r.str(k) == "1" }

func (r *req) list(k string) []string {
	switch v := r.params[k].(type) {
	case []any:
		out := make([]string, 0, len(v))
		for _, e := range v {
			s, _ := scalarString(e)
			out = append(out, s)
		}
		return out
	case nil:
		return nil
	default:
		s, _ := scalarString(v)
		return []string{s}
	}
}

// Handler returns the simulator's HTTP handler (all paths under
// /api2/json). Errors carry their message in the reason phrase, which
// needs a hijackable connection (HTTP/1.1); elsewhere (httptest recorders)
// the standard reason phrase is used and the message is in the body.
func (s *Sim) Handler() http.Handler { return http.HandlerFunc(s.serveHTTP) }

const apiPrefix = "/api2/json"

func (s *Sim) serveHTTP(w http.ResponseWriter, hr *http.Request) {
	rel := strings.TrimPrefix(hr.URL.Path, apiPrefix)
	f := s.matchFault(hr.Method, rel)
	if f != nil {
		if f.Latency > 0 {
			select {
			case <-time.After(f.Latency):
			case <-hr.Context().Done():
				return
			}
		}
		if f.Drop {
			dropConn(w)
			return
		}
		if f.Status != 0 {
			msg := f.Message
			if msg == "" {
				msg = http.StatusText(f.Status)
			}
			s.writeError(w, &APIError{Status: f.Status, Message: msg + "\n"})
			return
		}
	}
	if s.opts.Control && strings.HasPrefix(hr.URL.Path, controlPrefix) {
		if _, err := s.authenticate(hr); err != nil {
			s.writeError(w, err.(*APIError))
			return
		}
		s.serveControl(w, hr)
		return
	}
	if s.opts.Latency > 0 {
		select {
		case <-time.After(s.opts.Latency):
		case <-hr.Context().Done():
			return
		}
	}
	rec := Request{Method: hr.Method, Path: rel}
	status, data, extra, err := s.serve(hr, rel, &rec)
	rec.Status = status
	s.record(rec)
	if err != nil {
		var ae *APIError
		if !errors.As(err, &ae) {
			ae = &APIError{Status: 500, Message: err.Error() + "\n"}
		}
		if ae.Status == 401 && s.opts.AuthFailureDelay > 0 {
			select {
			case <-time.After(s.opts.AuthFailureDelay):
			case <-hr.Context().Done():
				return
			}
		}
		s.logf("%s %s -> %d %s", hr.Method, rel, ae.Status, firstLine(ae.Message))
		s.writeError(w, ae)
		return
	}
	s.logf("%s %s -> 200", hr.Method, rel)
	body := map[string]any{"data": data}
	for k, v := range extra {
		body[k] = v
	}
	b, _ := json.Marshal(body)
	setHeaders(w.Header())
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(200)
	_, _ = w.Write(b)
}

func setHeaders(h http.Header) {
	h.Set("Content-Type", "application/json;charset=UTF-8")
	h.Set("Server", "pve-api-daemon/3.0")
	h.Set("Cache-Control", "max-age=0")
	h.Set("Pragma", "no-cache")
	h.Set("Expires", time.Now().UTC().Format(http.TimeFormat))
}

func dropConn(w http.ResponseWriter) {
	if hj, ok := w.(http.Hijacker); ok {
		if c, _, err := hj.Hijack(); err == nil {
			_ = c.Close()
			return
		}
	}
	panic(http.ErrAbortHandler)
}

// writeError writes PVE's error answer: the message's first line as the
// reason phrase, body {"data":null,"message":...[,"errors":{...}]}.
func (s *Sim) writeError(w http.ResponseWriter, e *APIError) {
	body := map[string]any{"data": nil, "message": e.Message}
	if e.Errors != nil {
		body["errors"] = e.Errors
	}
	b, _ := json.Marshal(body)
	reason := firstLine(e.Message)
	if reason == "" || strings.ContainsAny(reason, "\r\n") {
		reason = http.StatusText(e.Status)
	}
	if hj, ok := w.(http.Hijacker); ok {
		conn, bufrw, err := hj.Hijack()
		if err == nil {
			defer conn.Close()
			var hb bytes.Buffer
			fmt.Fprintf(&hb, "HTTP/1.1 %03d %s\r\n", e.Status, reason)
			h := http.Header{}
			setHeaders(h)
			h.Set("Content-Length", strconv.Itoa(len(b)))
			h.Set("Connection", "close")
			_ = h.Write(&hb)
			hb.WriteString("\r\n")
			hb.Write(b)
			_, _ = bufrw.Write(hb.Bytes())
			_ = bufrw.Flush()
			return
		}
	}
	setHeaders(w.Header())
	w.Header().Set("X-Pvesim-Reason", reason)
	w.WriteHeader(e.Status)
	_, _ = w.Write(b)
}

// serve authenticates, validates and dispatches one request.
func (s *Sim) serve(hr *http.Request, rel string, rec *Request) (int, any, map[string]any, error) {
	fail := func(err error) (int, any, map[string]any, error) {
		var ae *APIError
		if errors.As(err, &ae) {
			return ae.Status, nil, nil, err
		}
		return 500, nil, nil, err
	}
	if !strings.HasPrefix(hr.URL.Path, apiPrefix+"/") {
		return fail(notImplemented(hr.Method, hr.URL.Path))
	}
	schema := s.schema
	if schema == nil {
		schema = s.builtin
	}
	tpl, binds, m, err := schema.Lookup(hr.Method, rel)
	if err != nil {
		return fail(err)
	}
	rec.Template = tpl
	params, perr := parseParams(hr)
	if perr != nil {
		return fail(perr)
	}
	rec.Params = params
	public := (hr.Method == "POST" && tpl == "/access/ticket") || (hr.Method == "GET" && tpl == "/access/domains")
	var id identity
	if !public {
		id, err = s.authenticate(hr)
		if err != nil {
			return fail(err)
		}
		rec.User = id.user
	}
	// URI parameters join the body and query parameters.
	for k, v := range binds {
		if old, ok := params[k]; ok {
			if os, _ := scalarString(old); os != v {
				return fail(paramError(map[string]string{k: "duplicate parameter (not allowed)"}))
			}
		}
		params[k] = v
	}
	normalizeArrays(m, params)
	if errs := ValidateParams(m, params); len(errs) > 0 {
		return fail(paramError(errs))
	}
	if id.restricted && tpl != "/version" {
		return fail(permError(hr.Method, tpl, binds))
	}
	r := &req{ctx: hr.Context(), method: hr.Method, path: rel, template: tpl, params: params, binds: binds, id: id, m: m}
	if node, ok := binds["node"]; ok {
		if err := s.checkNode(node); err != nil {
			return fail(err)
		}
	}
	h := routeHandler(hr.Method, tpl)
	if h == nil {
		if hr.Method == "GET" {
			if idx := s.index(schema, tpl); idx != nil {
				return 200, idx, nil, nil
			}
		}
		return fail(&APIError{Status: 501, Message: fmt.Sprintf("Method '%s %s' not implemented\n", hr.Method, rel)})
	}
	data, extra, err := h(s, r)
	if err != nil {
		return fail(err)
	}
	return 200, data, extra, nil
}

// index answers a directory GET the simulator has no handler for with
// the schema's children, as PVE's index methods do.
func (s *Sim) index(schema *Schema, tpl string) any {
	n := schema.find(tpl)
	if n == nil || len(n.Children) == 0 {
		return nil
	}
	key := "subdir"
	if m := n.Info["GET"]; m != nil && m.Returns != nil && m.Returns.Items != nil {
		for k := range m.Returns.Items.Properties {
			key = k
			break
		}
	}
	out := []any{}
	for _, c := range n.Children {
		l := lastSeg(c.Path)
		if strings.HasPrefix(l, "{") {
			return nil
		}
		out = append(out, map[string]any{key: l})
	}
	return out
}

func (s *Sim) checkNode(node string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := s.node(node)
	if n == nil {
		return errf("hostname lookup '%s' failed - failed to get address info for: %s: Name or service not known", node, node)
	}
	if !n.online {
		return &APIError{Status: 595, Message: "No route to host\n"}
	}
	return nil
}

// parseParams reads JSON or form-urlencoded bodies and merges the query
// parameters over them, as PVE's AnyEvent.pm does. Repeated form keys
// become arrays.
func parseParams(hr *http.Request) (map[string]any, error) {
	params := map[string]any{}
	body, err := io.ReadAll(io.LimitReader(hr.Body, 16<<20))
	if err != nil {
		return nil, &APIError{Status: 400, Message: "unable to read request body\n"}
	}
	ct := hr.Header.Get("Content-Type")
	if len(bytes.TrimSpace(body)) > 0 {
		if strings.HasPrefix(ct, "application/json") {
			dec := json.NewDecoder(bytes.NewReader(body))
			dec.UseNumber()
			var m map[string]any
			if err := dec.Decode(&m); err != nil {
				return nil, &APIError{Status: 400, Message: "malformed JSON in request body - " + err.Error() + "\n"}
			}
			for k, v := range m {
				if v != nil {
					params[k] = v
				}
			}
		} else {
			vals, err := url.ParseQuery(string(body))
			if err != nil {
				return nil, &APIError{Status: 400, Message: "unable to parse request body\n"}
			}
			addValues(params, vals)
		}
	}
	addValues(params, hr.URL.Query())
	return params, nil
}

func addValues(params map[string]any, vals url.Values) {
	for k, vs := range vals {
		if len(vs) == 1 {
			params[k] = vs[0]
		} else {
			arr := make([]any, len(vs))
			for i, v := range vs {
				arr[i] = v
			}
			params[k] = arr
		}
	}
}

// normalizeArrays turns a single form value of an array-typed parameter
// into a one-element array (forms cannot say "array of one").
func normalizeArrays(m *Method, params map[string]any) {
	if m.Parameters == nil {
		return
	}
	for k, v := range params {
		p := propFor(m.Parameters.Properties, k)
		if p == nil || p.Type() != "array" {
			continue
		}
		if str, ok := v.(string); ok {
			params[k] = []any{str}
		}
	}
}

// ---- authentication ----

var errNoTicket = &APIError{Status: 401, Message: "No ticket\n"}
var errAuthFailed = &APIError{Status: 401, Message: "authentication failure\n"}

func (s *Sim) sign(parts ...string) string {
	m := hmac.New(sha256.New, s.secret)
	m.Write([]byte(strings.Join(parts, "\x00")))
	return base64.RawStdEncoding.EncodeToString(m.Sum(nil))
}

// ticket is "PVE:user:HEXTIME::signature", like PVE's.
func (s *Sim) ticket(user string, t time.Time) string {
	ts := fmt.Sprintf("%08X", t.Unix())
	return fmt.Sprintf("PVE:%s:%s::%s", user, ts, s.sign("ticket", user, ts))
}

func (s *Sim) csrf(user string, t time.Time) string {
	ts := fmt.Sprintf("%08X", t.Unix())
	return ts + ":" + s.sign("csrf", user, ts)
}

func (s *Sim) verifyTicket(tk string) (string, bool) {
	parts := strings.Split(tk, ":")
	if len(parts) != 5 || parts[0] != "PVE" || parts[3] != "" {
		return "", false
	}
	user, ts := parts[1], parts[2]
	if !hmac.Equal([]byte(parts[4]), []byte(s.sign("ticket", user, ts))) {
		return "", false
	}
	sec, err := strconv.ParseInt(ts, 16, 64)
	if err != nil || time.Since(time.Unix(sec, 0)) > 2*time.Hour {
		return "", false
	}
	return user, true
}

func (s *Sim) authenticate(hr *http.Request) (identity, error) {
	if a := hr.Header.Get("Authorization"); strings.HasPrefix(a, "PVEAPIToken") {
		rest := strings.TrimPrefix(a, "PVEAPIToken")
		rest = strings.TrimLeft(rest, "= ")
		id, secret, ok := strings.Cut(rest, "=")
		if !ok {
			id, secret, ok = strings.Cut(rest, ":")
		}
		want, known := s.tokens[id]
		restricted := false
		if !known {
			want, known = s.restricted[id]
			restricted = true
		}
		if !ok || !known || !hmac.Equal([]byte(secret), []byte(want)) {
			return identity{}, errAuthFailed
		}
		return identity{user: id, token: true, restricted: restricted}, nil
	}
	c, err := hr.Cookie("PVEAuthCookie")
	if err != nil || c.Value == "" {
		return identity{}, errNoTicket
	}
	tk, _ := url.PathUnescape(c.Value) // PVE: uri_unescape, %XX only: a + in the base64 signature stays a +
	user, ok := s.verifyTicket(tk)
	if !ok {
		return identity{}, errAuthFailed
	}
	if hr.Method != "GET" && hr.Method != "HEAD" {
		tok := hr.Header.Get("CSRFPreventionToken")
		ts, _, _ := strings.Cut(tok, ":")
		if tok == "" || tok != ts+":"+s.sign("csrf", user, ts) {
			return identity{}, &APIError{Status: 401, Message: "Permission denied - invalid csrf token\n"}
		}
	}
	return identity{user: user}, nil
}

// permError is the 403 a caller without privileges gets: PVE's
// "Permission check failed (PATH, PRIVILEGE)".
func permError(method, tpl string, binds map[string]string) *APIError {
	path := "/"
	priv := "Sys.Audit"
	switch {
	case binds["vmid"] != "":
		path = "/vms/" + binds["vmid"]
		switch {
		case method == "GET":
			priv = "VM.Audit"
		case strings.Contains(tpl, "/status/"):
			priv = "VM.PowerMgmt"
		case strings.Contains(tpl, "/snapshot"):
			priv = "VM.Snapshot"
		case strings.HasSuffix(tpl, "/clone"):
			priv = "VM.Clone"
		case strings.Contains(tpl, "/agent"):
			priv = "VM.GuestAgent.Unrestricted"
		case method == "DELETE" && strings.HasSuffix(tpl, "{vmid}"):
			priv = "VM.Allocate"
		default:
			priv = "VM.Config.Options"
		}
	case binds["storage"] != "":
		path, priv = "/storage/"+binds["storage"], "Datastore.Audit"
	case binds["node"] != "":
		path = "/nodes/" + binds["node"]
		if method == "POST" && (strings.HasSuffix(tpl, "/qemu") || strings.HasSuffix(tpl, "/lxc")) {
			path, priv = "/vms", "VM.Allocate"
		}
	}
	return &APIError{Status: 403, Message: fmt.Sprintf("Permission check failed (%s, %s)\n", path, priv)}
}
