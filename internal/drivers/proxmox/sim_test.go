package proxmox

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"log"
	"net"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/subbus/subbus/internal/config"
	"github.com/subbus/subbus/internal/pvesim"
)

// Test credentials of the simulator.
const (
	testTokenID  = "root@pam!subbus"
	testSecret   = "5f0c0a4e-1d2b-4c3d-9e8f-a0b1c2d3e4f5"
	testPassword = "pvesim-test"
)

// Volumes every simulator node has (pvesim seeds them).
const (
	testISO    = "local:iso/debian-12.7.0-amd64-netinst.iso"
	testVZTmpl = "local:vztmpl/alpine-3.20-default_20240908_amd64.tar.xz"
)

// schemaPath is PVE <version>'s API schema in the shared reference
// beside the repository (never copied into it).
func schemaPath(version string) string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "..", "..", "shared", "reference", "pve", "apischema-pve"+version+".json.gz")
}

// loadSchema returns PVE 9's schema (and loads PVE 8's for
// checkRequests): an absence fails the test under CI=true and skips it
// elsewhere.
func loadSchema(t testing.TB) *pvesim.Schema {
	t.Helper()
	schemaOnce.Do(func() {
		schema, schemaErr = pvesim.LoadSchema(schemaPath("9"))
		if schemaErr == nil {
			schema8, schemaErr = pvesim.LoadSchema(schemaPath("8"))
		}
	})
	if schemaErr != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("PVE API schema: %v (the shared reference must be beside the repository in CI)", schemaErr)
		}
		t.Skipf("PVE API schema not available (%v): put the shared reference beside the repository", schemaErr)
	}
	return schema
}

var (
	schemaOnce sync.Once
	schema     *pvesim.Schema
	schema8    *pvesim.Schema
	schemaErr  error
)

// simEnv is one in-process simulator behind HTTPS on 127.0.0.1.
type simEnv struct {
	t   testing.TB
	sim *pvesim.Sim
	srv *httptest.Server
	url string
	fp  string // SHA-256 fingerprint of its certificate
}

// startSim starts a simulator validating against PVE 9's schema, with a
// token and root's password, fast delays unless opts sets them.
func startSim(t testing.TB, opts pvesim.Options) *simEnv {
	t.Helper()
	if opts.Schema == nil {
		opts.Schema = loadSchema(t)
	}
	if opts.Tokens == nil {
		opts.Tokens = []string{testTokenID + "=" + testSecret}
	}
	if opts.Password == "" {
		opts.Password = testPassword
	}
	if opts.AuthFailureDelay == 0 {
		opts.AuthFailureDelay = -1
	}
	sim, err := pvesim.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(sim.Handler())
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // refused handshakes are what TestCertificate wants
	srv.StartTLS()
	t.Cleanup(srv.Close)
	sum := sha256.Sum256(srv.Certificate().Raw)
	return &simEnv{t: t, sim: sim, srv: srv, url: srv.URL, fp: formatFingerprint(sum[:])}
}

// options are driver options for this simulator: token auth, the
// certificate pinned, fast polling.
func (s *simEnv) options() Options {
	o := DefaultOptions()
	o.URL = s.url
	o.TokenID, o.TokenSecret = testTokenID, testSecret
	o.Fingerprint = s.fp
	return fastOptions(o)
}

// fastOptions shortens every poll for tests.
func fastOptions(o Options) Options {
	o.TaskPollInterval = config.Duration(50 * time.Millisecond)
	o.EventPollInterval = config.Duration(200 * time.Millisecond)
	o.LogPollInterval = config.Duration(200 * time.Millisecond)
	o.RequestTimeout = config.Duration(10 * time.Second)
	o.ReconcileTimeout = config.Duration(30 * time.Second)
	return o
}

// driver returns a connected driver for this simulator.
func (s *simEnv) driver(ctx context.Context) *Driver {
	s.t.Helper()
	d := New(s.options())
	if err := d.Connect(ctx); err != nil {
		s.t.Fatalf("Connect: %v", err)
	}
	s.t.Cleanup(func() { _ = d.Close() })
	return d
}

// checkRequests fails the test for every request the simulator refused
// as invalid (400) or that matched no path of PVE 9's schema (which the
// simulator answers 501), and for every request PVE 8's schema does not
// allow.
func (s *simEnv) checkRequests(t testing.TB) {
	t.Helper()
	bad := 0
	lacking := map[string]bool{}
	for _, r := range s.sim.Requests() {
		if r.Template != "" && r.Status == 501 && !lacking[r.Template] {
			// In the schema, not in the simulator: the driver's request is valid.
			lacking[r.Template] = true
			t.Logf("the simulator does not implement %s %s (PVE 9 has it)", r.Method, r.Template)
			continue
		}
		if r.Template == "" || r.Status == 400 {
			bad++
			if bad <= 20 {
				t.Errorf("request not valid for PVE 9: %s %s %v -> %d (schema path %q)", r.Method, r.Path, r.Params, r.Status, r.Template)
			}
			continue
		}
		// The same request must be valid for PVE 8 too.
		err := schema8.ValidateRequest(r.Method, r.Path, r.Params)
		if err != nil {
			bad++
			if bad <= 20 {
				t.Errorf("request not valid for PVE 8: %s %s %v: %v", r.Method, r.Path, r.Params, err)
			}
		}
	}
	if bad > 20 {
		t.Errorf("… %d invalid requests in all", bad)
	}
}

// guestByName returns the simulator's guest called name.
func (s *simEnv) guestByName(name string) (pvesim.GuestInfo, bool) {
	for _, g := range s.sim.Guests() {
		if g.Name == name {
			return g, true
		}
	}
	return pvesim.GuestInfo{}, false
}

// closedAddr returns an address on 127.0.0.1 where nothing listens.
func closedAddr(t testing.TB) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	return addr
}

// testAgent scripts the guest agent as a tiny POSIX shell: enough for
// the conformance suite's commands (true, exit N, echo [>&2] with
// $VARS, pwd, cat) and for the driver's env/workdir wrapper.
func testAgent(vmid int, name string, command []string, input string) pvesim.AgentResult {
	env := map[string]string{}
	dir := "/"
	argv := command
	// The driver's wrapper: /bin/sh -c '[cd "$1" || exit 126; shift; ]exec env "$@"' sh [DIR] K=V… [--] CMD…
	if len(argv) >= 4 && argv[1] == "-c" && strings.HasSuffix(argv[2], `exec env "$@"`) && argv[3] == "sh" {
		rest := argv[4:]
		if strings.HasPrefix(argv[2], "cd ") && len(rest) > 0 {
			dir, rest = rest[0], rest[1:]
		}
		for len(rest) > 0 && strings.Contains(rest[0], "=") {
			k, v, _ := strings.Cut(rest[0], "=")
			env[k], rest = v, rest[1:]
		}
		if len(rest) > 0 && rest[0] == "--" {
			rest = rest[1:]
		}
		argv = rest
	}
	if len(argv) == 3 && (argv[0] == "sh" || argv[0] == "/bin/sh") && argv[1] == "-c" {
		return runScript(argv[2], env, dir, input)
	}
	return pvesim.DefaultAgent(vmid, name, argv, input)
}

// runScript interprets statements separated by ';'.
func runScript(script string, env map[string]string, dir, input string) pvesim.AgentResult {
	var res pvesim.AgentResult
	for _, st := range strings.Split(script, ";") {
		words := strings.Fields(strings.TrimSpace(st))
		if len(words) == 0 {
			continue
		}
		switch words[0] {
		case "true":
		case "exit":
			n, _ := strconv.Atoi(words[1])
			res.ExitCode = n
			return res
		case "pwd":
			res.Stdout += dir + "\n"
		case "cat":
			res.Stdout += input
		case "echo":
			toErr := false
			var out []string
			for _, w := range words[1:] {
				if w == ">&2" {
					toErr = true
					continue
				}
				w = strings.Trim(w, `"'`)
				if strings.HasPrefix(w, "$") {
					w = env[w[1:]]
				}
				out = append(out, w)
			}
			line := strings.Join(out, " ") + "\n"
			if toErr {
				res.Stderr += line
			} else {
				res.Stdout += line
			}
		default:
			res.Stderr += fmt.Sprintf("sh: %s: not found\n", words[0])
			res.ExitCode = 127
			return res
		}
	}
	return res
}
