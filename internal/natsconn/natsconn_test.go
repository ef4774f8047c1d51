package natsconn

import (
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
)

// startServer starts an embedded nats-server on a random loopback port.
func startServer(t *testing.T, configure func(*server.Options)) *server.Server {
	t.Helper()
	opts := &server.Options{Host: "127.0.0.1", Port: -1, NoSigs: true, NoLog: true}
	if configure != nil {
		configure(opts)
	}
	s, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	if !s.ReadyForConnections(5 * time.Second) {
		t.Fatal("nats-server did not start")
	}
	t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	return s
}

// isolate points the nats config dir at a fresh directory and clears the env.
func isolate(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	t.Setenv("XDG_CONFIG_HOME", dir)
	for _, k := range []string{"NATS_URL", "NATS_CREDS", "NATS_NKEY", "NATS_USER", "NATS_PASSWORD", "NATS_TOKEN",
		"NATS_CERT", "NATS_KEY", "NATS_CA", "NATS_CONTEXT", "NATS_INBOX_PREFIX", "NATS_CONNECT_TIMEOUT"} {
		t.Setenv(k, "")
	}
	return filepath.Join(dir, "nats")
}

func writeContext(t *testing.T, natsDir, name string, c Context, selected bool) {
	t.Helper()
	if err := os.MkdirAll(filepath.Join(natsDir, "context"), 0o700); err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(c)
	if err := os.WriteFile(filepath.Join(natsDir, "context", name+".json"), b, 0o600); err != nil {
		t.Fatal(err)
	}
	if selected {
		if err := os.WriteFile(filepath.Join(natsDir, "context.txt"), []byte(name+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

func TestConnectAuth(t *testing.T) {
	isolate(t)
	userSrv := startServer(t, func(o *server.Options) { o.Username, o.Password = "alice", "s3cret" })
	tokenSrv := startServer(t, func(o *server.Options) { o.Authorization = "tok-123" })

	cases := []struct {
		name    string
		opts    Options
		wantErr bool
	}{
		{"user and password", Options{URL: userSrv.ClientURL(), User: "alice", Password: "s3cret"}, false},
		{"wrong password", Options{URL: userSrv.ClientURL(), User: "alice", Password: "nope"}, true},
		{"no credentials", Options{URL: userSrv.ClientURL()}, true},
		{"token", Options{URL: tokenSrv.ClientURL(), Token: "tok-123"}, false},
		{"wrong token", Options{URL: tokenSrv.ClientURL(), Token: "tok-999"}, true},
		{"inbox prefix", Options{URL: tokenSrv.ClientURL(), Token: "tok-123", InboxPrefix: "_INBOX_bob"}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			nc, err := tc.opts.Connect("natsconn-test")
			if tc.wantErr {
				if err == nil {
					nc.Close()
					t.Fatal("connected, want an authorization error")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer nc.Close()
			if tc.opts.InboxPrefix != "" && !strings.HasPrefix(nc.NewRespInbox(), tc.opts.InboxPrefix+".") {
				t.Errorf("inbox %q does not use prefix %q", nc.NewRespInbox(), tc.opts.InboxPrefix)
			}
		})
	}
}

func TestContextFile(t *testing.T) {
	natsDir := isolate(t)
	s := startServer(t, func(o *server.Options) { o.Username, o.Password = "ctxuser", "ctxpass" })
	writeContext(t, natsDir, "dev", Context{URL: s.ClientURL(), User: "ctxuser", Password: "ctxpass"}, false)
	writeContext(t, natsDir, "broken", Context{URL: s.ClientURL(), User: "ctxuser", Password: "wrong"}, true)

	// Named context.
	nc, err := Options{Context: "dev"}.Connect("ctx-test")
	if err != nil {
		t.Fatalf("named context: %v", err)
	}
	nc.Close()

	// The selected context is used when none is named; its password is wrong.
	if nc, err := (Options{}).Connect("ctx-test"); err == nil {
		nc.Close()
		t.Fatal("selected context with a wrong password connected")
	}
	// Explicit user/password override the (selected) context.
	nc, err = Options{User: "ctxuser", Password: "ctxpass"}.Connect("ctx-test")
	if err != nil {
		t.Fatalf("flags over the selected context: %v", err)
	}
	nc.Close()

	// Missing and hostile context names.
	for _, name := range []string{"nope", "../dev"} {
		if _, err := (Options{Context: name}).Resolve(); err == nil {
			t.Errorf("context %q resolved, want an error", name)
		}
	}
}

func TestIsZeroAndResolveDefaults(t *testing.T) {
	natsDir := isolate(t)
	if !(Options{}).IsZero() {
		t.Fatal("empty options with no selected context should be zero")
	}
	r, err := Options{}.Resolve()
	if err != nil {
		t.Fatal(err)
	}
	if r.URL != DefaultURL || r.ConnectTimeout != DefaultConnectTimeout {
		t.Fatalf("defaults: %+v", r)
	}
	if (Options{Token: "x"}).IsZero() {
		t.Fatal("options with a token are not zero")
	}
	writeContext(t, natsDir, "sel", Context{URL: "nats://127.0.0.1:1"}, true)
	if (Options{}).IsZero() {
		t.Fatal("a selected context makes the options non-zero")
	}
	if !(Options{NoContext: true}).IsZero() {
		t.Fatal("--no-context ignores the selected context")
	}
}

func TestEnvAndFlags(t *testing.T) {
	isolate(t)
	t.Setenv("NATS_URL", "nats://env:4222")
	t.Setenv("NATS_USER", "envuser")
	t.Setenv("NATS_TOKEN", "envtok")
	t.Setenv("NATS_CONNECT_TIMEOUT", "3s")
	o := FromEnv()
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	o.RegisterFlags(fs)
	if err := fs.Parse([]string{"-s", "nats://flag:4222", "--token", "flagtok"}); err != nil {
		t.Fatal(err)
	}
	if o.URL != "nats://flag:4222" || o.Token != "flagtok" || o.User != "envuser" || o.ConnectTimeout != 3*time.Second {
		t.Fatalf("flags must override env, env must fill the rest: %+v", o)
	}
}

func TestTLSPairRequired(t *testing.T) {
	isolate(t)
	r, err := Options{TLSCert: "c.pem"}.Resolve()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.NATSOptions("x"); err == nil {
		t.Fatal("a certificate without a key must be rejected")
	}
}

func TestConnectNKey(t *testing.T) {
	natsDir := isolate(t)
	kp, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := kp.PublicKey()
	seed, _ := kp.Seed()
	seedFile := filepath.Join(t.TempDir(), "user.nk")
	if err := os.WriteFile(seedFile, seed, 0o600); err != nil {
		t.Fatal(err)
	}
	s := startServer(t, func(o *server.Options) { o.Nkeys = []*server.NkeyUser{{Nkey: pub}} })
	nc, err := Options{URL: s.ClientURL(), NKey: seedFile}.Connect("nkey-test")
	if err != nil {
		t.Fatalf("nkey: %v", err)
	}
	nc.Close()
	if nc, err := (Options{URL: s.ClientURL()}).Connect("nkey-test"); err == nil {
		nc.Close()
		t.Fatal("connected without the nkey")
	}
	// The nkey from a context file.
	writeContext(t, natsDir, "nk", Context{URL: s.ClientURL(), NKey: seedFile}, false)
	nc, err = Options{Context: "nk"}.Connect("nkey-test")
	if err != nil {
		t.Fatalf("nkey from a context: %v", err)
	}
	nc.Close()
}

// TestLocalCredentialDiscovery: with no credential given, a loopback
// server is offered the local credential (root's worker's for root, the
// user's own worker's first otherwise); a remote one never is; an
// explicit credential wins; and a refusal names the file to ask for.
func TestLocalCredentialDiscovery(t *testing.T) {
	isolate(t)
	dir := t.TempDir()
	t.Setenv("XDG_STATE_HOME", dir)
	old := SystemCredential
	SystemCredential = filepath.Join(dir, "system", "client.nk")
	t.Cleanup(func() { SystemCredential = old })
	own := LocalCredential()
	if os.Geteuid() == 0 && own != SystemCredential {
		t.Fatalf("root's local credential is %s, want %s", own, SystemCredential)
	}
	if os.Geteuid() != 0 && own != filepath.Join(dir, "subbus", "client.nk") {
		t.Fatalf("local credential %s", own)
	}
	kp, _ := nkeys.CreateUser()
	seed, _ := kp.Seed()
	pub, _ := kp.PublicKey()
	s := startServer(t, func(o *server.Options) { o.Nkeys = []*server.NkeyUser{{Nkey: pub}} })
	url := s.ClientURL()

	// Nothing there yet: refused, naming root's file.
	_, err := Options{URL: url}.Connect("t")
	var na *NotAuthorizedError
	if !errors.As(err, &na) || na.Path != SystemCredential ||
		err.Error() != "not authorized - ask an administrator for access to "+SystemCredential+" or use --creds" {
		t.Fatalf("no credential: %v", err)
	}
	if err := os.MkdirAll(filepath.Dir(own), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(own, append(seed, '\n'), 0o600); err != nil {
		t.Fatal(err)
	}
	nc, err := Options{URL: url}.Connect("t")
	if err != nil {
		t.Fatalf("with the local credential: %v", err)
	}
	nc.Close()
	// A local server without authentication still works with the file there.
	noAuth := startServer(t, nil)
	nc, err = Options{URL: noAuth.ClientURL()}.Connect("t")
	if err != nil {
		t.Fatalf("a server without authentication: %v", err)
	}
	nc.Close()
	// ... also for a daemon that retries a failed connect (the worker):
	// that option hides the rejection of the credential, so without the
	// probe this connection would retry with it forever.
	nc, err = Options{URL: noAuth.ClientURL()}.Connect("t", nats.RetryOnFailedConnect(true), nats.MaxReconnects(-1))
	if err != nil {
		t.Fatalf("a server without authentication, retrying connect: %v", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for !nc.IsConnected() && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if !nc.IsConnected() {
		t.Fatalf("retrying connect to a server without authentication: status %v, last error %v", nc.Status(), nc.LastError())
	}
	nc.Close()

	tests := []struct {
		name    string
		o       Options
		wantKey string
	}{
		{"loopback IP", Options{URL: "nats://127.0.0.1:4333"}, own},
		{"localhost list", Options{URL: "nats://localhost:1,nats://[::1]:2"}, own},
		{"remote host", Options{URL: "nats://nats.example:4222"}, ""},
		{"explicit creds", Options{URL: "nats://127.0.0.1:1", Creds: "/x.creds"}, ""},
		{"explicit user", Options{URL: "nats://127.0.0.1:1", User: "u"}, ""},
		{"explicit nkey", Options{URL: "nats://127.0.0.1:1", NKey: "/mine.nk"}, "/mine.nk"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := tt.o.Resolve()
			if err != nil {
				t.Fatal(err)
			}
			if r.NKey != tt.wantKey {
				t.Fatalf("nkey %q, want %q", r.NKey, tt.wantKey)
			}
		})
	}
	// An explicit, wrong credential: refused without pointing at the file.
	other, _ := nkeys.CreateUser()
	oseed, _ := other.Seed()
	bad := filepath.Join(dir, "other.nk")
	if err := os.WriteFile(bad, oseed, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = Options{URL: url, NKey: bad}.Connect("t")
	if !errors.As(err, &na) || na.Path != "" {
		t.Fatalf("wrong explicit nkey: %v", err)
	}
}
