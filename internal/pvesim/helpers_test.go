package pvesim

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/subbus/subbus/internal/testenv"
)

const testToken = "root@pam!test=5ecret"

// startSim serves a simulator for one test, with fast delays and no 401
// delay unless opts say otherwise.
func startSim(t *testing.T, opts Options) *Server {
	t.Helper()
	if opts.AuthFailureDelay == 0 {
		opts.AuthFailureDelay = -1
	}
	if opts.Tokens == nil {
		opts.Tokens = []string{testToken}
	}
	if opts.Delays == (Delays{}) {
		opts.Delays = Delays{Create: 20 * time.Millisecond, Start: 20 * time.Millisecond, Stop: 10 * time.Millisecond,
			Shutdown: 30 * time.Millisecond, Reboot: 30 * time.Millisecond, Snapshot: 20 * time.Millisecond,
			Rollback: 20 * time.Millisecond, Clone: 30 * time.Millisecond, Delete: 10 * time.Millisecond,
			Config: 10 * time.Millisecond, AgentStart: -1}
	}
	srv, err := Start("", opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Close() })
	return srv
}

var insecure = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
	TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}

// resp is one answer: status code, reason phrase and decoded body.
type resp struct {
	Code   int
	Reason string
	Body   map[string]any
	Raw    string
}

func (r resp) data() any { return r.Body["data"] }

func (r resp) str() string {
	s, _ := r.Body["data"].(string)
	return s
}

type client struct {
	t      *testing.T
	base   string
	header http.Header
	json   bool // JSON bodies (go-proxmox style) instead of forms (proxmoxer style)
}

func tokenClient(t *testing.T, srv *Server) *client {
	h := http.Header{}
	h.Set("Authorization", "PVEAPIToken="+testToken)
	return &client{t: t, base: srv.APIURL(), header: h}
}

// do sends params as a form (or JSON) body for POST/PUT and as the
// query for GET/DELETE.
func (c *client) do(method, path string, params map[string]any) resp {
	c.t.Helper()
	u := c.base + path
	var body io.Reader
	ct := ""
	if len(params) > 0 {
		if method == "GET" || method == "DELETE" {
			u += "?" + form(params).Encode()
		} else if c.json {
			b, _ := json.Marshal(params)
			body, ct = bytes.NewReader(b), "application/json"
		} else {
			body, ct = strings.NewReader(form(params).Encode()), "application/x-www-form-urlencoded"
		}
	}
	req, err := http.NewRequest(method, u, body)
	if err != nil {
		c.t.Fatal(err)
	}
	for k, v := range c.header {
		req.Header[k] = v
	}
	if ct != "" {
		req.Header.Set("Content-Type", ct)
	}
	res, err := insecure.Do(req)
	if err != nil {
		c.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	raw, _ := io.ReadAll(res.Body)
	r := resp{Code: res.StatusCode, Reason: strings.TrimPrefix(res.Status, strconv.Itoa(res.StatusCode)+" "), Raw: string(raw)}
	if err := json.Unmarshal(raw, &r.Body); err != nil {
		c.t.Fatalf("%s %s: body %q: %v", method, path, raw, err)
	}
	return r
}

func form(params map[string]any) url.Values {
	v := url.Values{}
	for k, x := range params {
		switch y := x.(type) {
		case []string:
			for _, e := range y {
				v.Add(k, e)
			}
		default:
			v.Set(k, fmt.Sprint(x))
		}
	}
	return v
}

// ok asserts a 200 answer and returns it.
func (c *client) ok(method, path string, params map[string]any) resp {
	c.t.Helper()
	r := c.do(method, path, params)
	if r.Code != 200 {
		c.t.Fatalf("%s %s: %d %s %s", method, path, r.Code, r.Reason, r.Raw)
	}
	return r
}

// task runs an async call and returns its task's exit status.
func (c *client) task(method, path string, params map[string]any) string {
	c.t.Helper()
	upid := c.ok(method, path, params).str()
	return c.wait(upid)
}

// wait polls a task until it stops and returns its exit status.
func (c *client) wait(upid string) string {
	c.t.Helper()
	node := strings.Split(upid, ":")[1]
	var exit string
	testenv.Eventually(c.t, 10*time.Second, func() error {
		st := c.ok("GET", "/nodes/"+node+"/tasks/"+upid+"/status", nil).data().(map[string]any)
		if st["status"] != "stopped" {
			return fmt.Errorf("task %s still %v", upid, st["status"])
		}
		exit, _ = st["exitstatus"].(string)
		return nil
	})
	return exit
}

func (c *client) mustTaskOK(method, path string, params map[string]any) {
	c.t.Helper()
	if exit := c.task(method, path, params); exit != "OK" {
		c.t.Fatalf("%s %s: task ended %q, want OK", method, path, exit)
	}
}

// repoRoot is the module root (the directory with go.mod).
func repoRoot(t testing.TB) string {
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no go.mod above the test directory")
		}
		dir = parent
	}
}

var (
	schemaMu    sync.Mutex
	schemaCache = map[string]*Schema{}
)

// refSchema loads PVE's published schema ("pve9" or "pve8") from
// <repo>/../shared/reference/pve: a failure in CI, a skip elsewhere.
func refSchema(t testing.TB, version string) *Schema {
	t.Helper()
	schemaMu.Lock()
	defer schemaMu.Unlock()
	if s := schemaCache[version]; s != nil {
		return s
	}
	path := filepath.Join(repoRoot(t), "..", "shared", "reference", "pve", "apischema-"+version+".json.gz")
	s, err := LoadSchema(path)
	testenv.Require(t, "PVE API schema "+path, err, "place PVE's published schema (pve-docs apidata.js as JSON, gzipped) there")
	schemaCache[version] = s
	return s
}

func newTokenRequest(srv *Server, method, path string) (*http.Request, error) {
	req, err := http.NewRequest(method, srv.APIURL()+path, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "PVEAPIToken="+testToken)
	return req, nil
}
