package lxc

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/internal/testenv"
)

// holdingProxy stands between a driver and LXD's unix socket. It passes
// every request through, except that while armed it holds the first wait
// on an operation (GET /1.0/operations/<id>/wait) until the client gives
// up on it, and notes the operation's status at that moment as LXD itself
// reports it. So a deadline always passes while the driver is waiting on
// an operation LXD has accepted, however fast or slow LXD is.
type holdingProxy struct {
	socket string // the proxy's own socket, for Options.Socket

	mu       sync.Mutex
	armed    bool
	heldOp   string // the operation whose wait was held
	opStatus string // its status (per LXD) when the wait arrived
}

func startHoldingProxy(t *testing.T) *holdingProxy {
	t.Helper()
	real, err := findSocket()
	if err != nil {
		t.Fatal(err)
	}
	var dialer net.Dialer
	upstream := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return dialer.DialContext(ctx, "unix", real)
	}, DisableKeepAlives: true} // as the driver's: see newClient
	t.Cleanup(upstream.CloseIdleConnections)
	direct := &http.Client{Transport: upstream, Timeout: 30 * time.Second}
	rp := &httputil.ReverseProxy{
		Rewrite:   func(r *httputil.ProxyRequest) { r.SetURL(&url.URL{Scheme: "http", Host: "unix.socket"}) },
		Transport: upstream,
	}
	p := &holdingProxy{socket: filepath.Join(t.TempDir(), "proxy.socket")}
	ln, err := net.Listen("unix", p.socket)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if id, ok := p.take(r); ok {
			p.note(id, direct)
			select {
			case <-r.Context().Done(): // the driver gave up: its deadline passed
			case <-time.After(2 * time.Minute):
			}
			http.Error(w, "held by the test proxy", http.StatusGatewayTimeout)
			return
		}
		rp.ServeHTTP(w, r)
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return p
}

// take disarms the proxy and returns the operation id when r is the wait
// to hold.
func (p *holdingProxy) take(r *http.Request) (string, bool) {
	rest, ok := strings.CutPrefix(r.URL.Path, "/1.0/operations/")
	if !ok || r.Method != http.MethodGet || !strings.HasSuffix(rest, "/wait") {
		return "", false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.armed {
		return "", false
	}
	p.armed = false
	p.heldOp = strings.TrimSuffix(rest, "/wait")
	return p.heldOp, true
}

// note records the held operation's status straight from LXD.
func (p *holdingProxy) note(id string, direct *http.Client) {
	status := "unknown"
	resp, err := direct.Get("http://unix.socket/1.0/operations/" + id)
	if err == nil {
		var env struct {
			Metadata struct {
				Status string `json:"status"`
			} `json:"metadata"`
		}
		if json.NewDecoder(resp.Body).Decode(&env) == nil {
			status = env.Metadata.Status
		}
		resp.Body.Close()
	}
	p.mu.Lock()
	p.opStatus = status
	p.mu.Unlock()
}

func (p *holdingProxy) arm() {
	p.mu.Lock()
	p.armed, p.heldOp, p.opStatus = true, "", ""
	p.mu.Unlock()
}

func (p *holdingProxy) held() (op, status string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.heldOp, p.opStatus
}

// TestDeadlineMidCreate: a create whose deadline passes after LXD has
// accepted it, while the driver waits on LXD's operation, returns
// timeout, and the instance LXD goes on to make is removed, so none of
// that name remains. The holding proxy makes the deadline land there on
// every run.
func TestDeadlineMidCreate(t *testing.T) {
	requireLXD(t)
	p := startHoldingProxy(t)
	o := DefaultOptions()
	o.Socket = p.socket
	d := New(o)
	connect, cancel := context.WithTimeout(context.Background(), probeTimeout)
	defer cancel()
	if err := d.Connect(connect); err != nil {
		t.Fatalf("Connect through the proxy: %v", err)
	}
	t.Cleanup(func() { _ = d.Close() })
	rec := record(d)

	name := randName("sbt-dl")
	t.Cleanup(func() { _, _ = d.Delete(context.Background(), name, drivers.DeleteOptions{Force: true}) })
	p.arm()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	begin := time.Now()
	_, err := d.Create(ctx, drivers.InstanceTemplate{Name: name, BaseImage: testImage})
	cancel()
	if code := classify(err); code != drivers.Timeout {
		t.Fatalf("Create with its wait held past the deadline: %v (code %s), want timeout", err, code)
	}
	if el := time.Since(begin); el > 10*time.Second {
		t.Errorf("Create returned %v after a 3s deadline", el)
	}
	op, status := p.held()
	if op == "" {
		t.Fatal("the create's operation wait never reached the proxy")
	}
	t.Logf("deadline passed while LXD's operation %s was %q", op, status)
	var accepted bool
	for _, r := range rec.matching(http.MethodPost, "/1.0/instances") {
		accepted = accepted || (strings.Contains(r.body, `"name":"`+name+`"`) && r.status == http.StatusAccepted)
	}
	if !accepted {
		t.Fatalf("LXD did not accept the create of %s", name)
	}

	// LXD made the instance; the driver removes it once the operation is
	// over, in the background.
	testenv.Eventually(t, 90*time.Second, func() error {
		_, err := d.Get(context.Background(), name)
		if classify(err) == drivers.NotFound {
			return nil
		}
		return fmt.Errorf("instance %s still there (err %v)", name, err)
	})
	deleted := false
	for _, r := range rec.matching(http.MethodDelete, "/1.0/instances/"+name) {
		deleted = deleted || r.status == http.StatusAccepted || r.status == http.StatusOK
	}
	if !deleted {
		t.Errorf("no successful DELETE of %s: the instance LXD made was not removed by the driver", name)
	}
}
