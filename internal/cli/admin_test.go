package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/subbus/subbus/internal/natsconn"
)

// TestAdminCreds: `subbus admin creds` writes one 0600 seed and one nats
// context per identity and an accounts.conf nats-server accepts (with
// literal keys, or with --env-keys and nkeys.env in the environment), and
// refuses to overwrite earlier output. `admin certs` writes a CA and a
// server certificate.
func TestAdminCreds(t *testing.T) {
	tests := []struct {
		name string
		args []string
	}{
		{"literal keys", []string{"--hosts", "h1,h2,h3", "--cluster-drivers", "proxmox", "--client", "alice:operator:hosts=h1", "--client", "bob:reader:drivers=docker", "--client", "admin:admin"}},
		{"env keys", []string{"--hosts", "h1", "--env-keys", "--url", "tls://n1:4222"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "out")
			var out, errb bytes.Buffer
			args := append([]string{"admin", "creds", "--out", dir}, tt.args...)
			if code := Run(context.Background(), args, &out, &errb); code != 0 {
				t.Fatalf("exit %d: %s", code, errb.String())
			}
			seeds, _ := filepath.Glob(filepath.Join(dir, "*.nk"))
			if len(seeds) < 3 {
				t.Fatalf("seeds %v", seeds)
			}
			for _, p := range seeds {
				st, _ := os.Stat(p)
				if st.Mode().Perm() != 0o600 {
					t.Errorf("%s mode %v", p, st.Mode().Perm())
				}
			}
			b, err := os.ReadFile(filepath.Join(dir, "worker-h1.context.json"))
			if err != nil {
				t.Fatal(err)
			}
			var c natsconn.Context
			if err := json.Unmarshal(b, &c); err != nil || c.InboxPrefix != "_INBOX_worker-h1" || c.NKey != filepath.Join(dir, "worker-h1.nk") {
				t.Fatalf("context %s: %v", b, err)
			}
			if env, err := os.ReadFile(filepath.Join(dir, "nkeys.env")); err == nil {
				for _, l := range strings.Split(strings.TrimSpace(string(env)), "\n") {
					k, v, _ := strings.Cut(l, "=")
					t.Setenv(k, v)
				}
			}
			conf := filepath.Join(dir, "server.conf")
			if err := os.WriteFile(conf, []byte("listen: \"127.0.0.1:-1\"\ninclude accounts.conf\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			if _, err := server.ProcessConfigFile(conf); err != nil {
				t.Fatalf("nats-server refuses the generated configuration: %v", err)
			}
			if code := Run(context.Background(), args, &out, &errb); code != ExitInternal || !strings.Contains(errb.String(), "exists") {
				t.Fatalf("regenerating into the same directory: exit %d: %s", code, errb.String())
			}
		})
	}
	dir := filepath.Join(t.TempDir(), "tls")
	var out, errb bytes.Buffer
	if code := Run(context.Background(), []string{"admin", "certs", "--out", dir, "--names", "n1,localhost,127.0.0.1", "--client-certs", "alice"}, &out, &errb); code != 0 {
		t.Fatalf("certs: exit %d: %s", code, errb.String())
	}
	for _, f := range []string{"ca.pem", "ca-key.pem", "server.pem", "server-key.pem", "alice.pem", "alice-key.pem"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Error(err)
		}
	}
	for _, bad := range [][]string{{"admin", "creds", "--out", t.TempDir()}, {"admin", "creds", "--hosts", "a.b", "--out", t.TempDir()},
		{"admin", "creds", "--hosts", "h1", "--client", "x:root", "--out", t.TempDir()}, {"admin", "nope"}} {
		if code := Run(context.Background(), bad, &out, &errb); code != ExitUsage {
			t.Errorf("%v: exit %d, want %d", bad, code, ExitUsage)
		}
	}
}
