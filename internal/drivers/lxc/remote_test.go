package lxc

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/subbus/subbus/internal/config"
	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/internal/testenv"
)

// remoteOptions are the HTTPS options scripts/setup/lxd.sh prepares: LXD
// listening on the loopback, a trusted client certificate, and the
// server's certificate to pin.
func remoteOptions(t *testing.T) Options {
	t.Helper()
	dir := os.Getenv("SUBBUS_SETUP_DIR")
	if dir == "" {
		dir = "/var/lib/subbus-test"
	}
	o := DefaultOptions()
	o.URL = "https://127.0.0.1:8443"
	o.TLSClientCert = filepath.Join(dir, "lxd", "client.crt")
	o.TLSClientKey = filepath.Join(dir, "lxd", "client.key")
	o.ServerCert = "/var/lib/lxd/server.crt"
	var missing error
	for _, f := range []string{o.TLSClientCert, o.TLSClientKey, o.ServerCert} {
		if _, err := os.Stat(f); err != nil && missing == nil {
			missing = err
		}
	}
	testenv.Require(t, "LXD's HTTPS test setup (loopback listener, trusted client certificate)", missing, howToStart)
	return o
}

// TestRemoteHTTPS talks to the real LXD over HTTPS with a client
// certificate and the pinned server certificate, events included.
func TestRemoteHTTPS(t *testing.T) {
	local := requireLXD(t)
	o := remoteOptions(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	d := New(o)
	if err := d.Connect(ctx); err != nil {
		t.Fatalf("Connect over HTTPS: %v", err)
	}
	defer d.Close()
	if _, err := d.List(ctx); err != nil {
		t.Fatalf("List over HTTPS: %v", err)
	}
	h, err := d.Health(ctx)
	if err != nil || !h.Healthy {
		t.Fatalf("Health over HTTPS: %+v, %v", h, err)
	}

	// The event websocket works over TLS too: start an instance through
	// the local socket and see it over HTTPS.
	var evs events
	watch(t, d, &evs)
	name := launch(t, local, nil)
	evs.wait(t, "started", func(ev drivers.Event) bool { return ev.Instance == name && ev.Type == drivers.EventStarted })

	t.Run("WrongPin", func(t *testing.T) {
		bad := o
		bad.ServerCert = o.TLSClientCert // a valid certificate, but not the server's
		err := New(bad).Connect(ctx)
		if err == nil || classify(err) != drivers.Unavailable {
			t.Errorf("Connect with a wrong pinned certificate: %v, want unavailable", err)
		}
	})
	t.Run("UntrustedClient", func(t *testing.T) {
		dir := t.TempDir()
		crt, key := filepath.Join(dir, "c.crt"), filepath.Join(dir, "c.key")
		writeSelfSigned(t, crt, key)
		bad := o
		bad.TLSClientCert, bad.TLSClientKey = crt, key
		err := New(bad).Connect(ctx)
		if classify(err) != drivers.PermissionDenied {
			t.Errorf("Connect with an untrusted client certificate: %v, want permission_denied", err)
		}
	})
}

func TestOptionsFromConfig(t *testing.T) {
	cfg, err := config.Parse([]byte("lxc:\n  default_image: img\n  project: p\n  stop_timeout: 5s\n"))
	if err != nil {
		t.Fatal(err)
	}
	o, err := OptionsFromConfig(cfg)
	if err != nil || o.DefaultImage != "img" || o.Project != "p" || o.DefaultProfile != "default" {
		t.Errorf("OptionsFromConfig = %+v, %v", o, err)
	}
	cfg, _ = config.Parse([]byte("lxc:\n  defualt_image: img\n"))
	if _, err := OptionsFromConfig(cfg); err == nil {
		t.Errorf("an unknown key was accepted")
	}
	cfg, _ = config.Parse([]byte("lxc:\n  url: https://h:8443\n"))
	if _, err := FromConfig(cfg); err == nil {
		t.Errorf("a url without TLS files was accepted")
	}
}

// writeSelfSigned writes a fresh self-signed client certificate and its
// key, PEM-encoded, that no server trusts.
func writeSelfSigned(t *testing.T, crtPath, keyPath string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: "subbus-untrusted"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(crtPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestDetect(t *testing.T) {
	requireLXD(t)
	ctx := context.Background()
	if err := Detect(ctx, &config.Config{}); err != nil {
		t.Errorf("Detect with the default socket: %v", err)
	}
	cfg, _ := config.Parse([]byte("lxc:\n  socket: /nonexistent/unix.socket\n"))
	if err := Detect(ctx, cfg); err == nil {
		t.Errorf("Detect with a missing socket succeeded")
	}
}

// TestClusterWide: the driver is cluster-wide (drivers.ClusterWide) when
// lxc.cluster_wide says so, else when lxc.url names a host that is not a
// loopback address; the local socket and loopback URLs are per-host.
func TestClusterWide(t *testing.T) {
	for _, tc := range []struct {
		yaml string
		want bool
	}{
		{"lxc: {}\n", false},
		{"lxc:\n  socket: /var/lib/lxd/unix.socket\n", false},
		{"lxc:\n  url: https://127.0.0.1:8443\n", false},
		{"lxc:\n  url: https://127.9.9.9:8443\n", false},
		{"lxc:\n  url: https://[::1]:8443\n", false},
		{"lxc:\n  url: https://localhost:8443\n", false},
		{"lxc:\n  url: https://lxd.example:8443\n", true},
		{"lxc:\n  url: https://10.0.0.5:8443\n", true},
		{"lxc:\n  url: https://[fd00::5]:8443\n", true},
		{"lxc:\n  url: https://lxd.example:8443\n  cluster_wide: false\n", false},
		{"lxc:\n  cluster_wide: true\n", true},
	} {
		cfg, err := config.Parse([]byte(tc.yaml))
		if err != nil {
			t.Fatal(err)
		}
		o, err := OptionsFromConfig(cfg)
		if err != nil {
			t.Fatalf("%q: %v", tc.yaml, err)
		}
		var d drivers.Driver = New(o)
		cw, ok := d.(drivers.ClusterWide)
		if !ok || cw.ClusterWide() != tc.want {
			t.Errorf("%q: cluster-wide %v, want %v", tc.yaml, ok && cw.ClusterWide(), tc.want)
		}
	}
}
