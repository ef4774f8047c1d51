package docker

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/subbus/subbus/internal/drivers"
)

// pki is a throw-away CA with a server certificate for 127.0.0.1 and a
// client certificate, written as PEM files.
type pki struct {
	dir           string
	ca, cert, key string // CA and client files
	serverTLS     tls.Certificate
	pool          *x509.CertPool
}

func newPKI(t *testing.T) *pki {
	t.Helper()
	dir := t.TempDir()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "subbus test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true,
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	issue := func(name string, usage x509.ExtKeyUsage, serial int64) (certPEM, keyPEM []byte) {
		k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
			IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &k.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		kb, _ := x509.MarshalECPrivateKey(k)
		return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb})
	}
	p := &pki{dir: dir, pool: x509.NewCertPool()}
	p.pool.AddCert(caCert)
	write := func(name string, b []byte) string {
		f := filepath.Join(dir, name)
		if err := os.WriteFile(f, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return f
	}
	p.ca = write("ca.pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}))
	sc, sk := issue("127.0.0.1", x509.ExtKeyUsageServerAuth, 2)
	cc, ck := issue("subbus client", x509.ExtKeyUsageClientAuth, 3)
	p.cert, p.key = write("cert.pem", cc), write("key.pem", ck)
	if p.serverTLS, err = tls.X509KeyPair(sc, sk); err != nil {
		t.Fatal(err)
	}
	return p
}

// tlsFront serves TLS (client certificates required) on 127.0.0.1 and
// forwards each connection to the local Docker socket: a real daemon
// reached the way a remote one would be.
func tlsFront(t *testing.T, p *pki) string {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		Certificates: []tls.Certificate{p.serverTLS}, ClientCAs: p.pool,
		ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS12,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				if err := c.(*tls.Conn).Handshake(); err != nil {
					return
				}
				up, err := net.Dial("unix", "/var/run/docker.sock")
				if err != nil {
					return
				}
				defer up.Close()
				go func() { _, _ = io.Copy(up, c); up.Close() }()
				_, _ = io.Copy(c, up)
			}()
		}
	}()
	return "tcp://" + ln.Addr().String()
}

// TestTLSEndpoint drives the real daemon over TCP with mutual TLS.
func TestTLSEndpoint(t *testing.T) {
	requireDocker(t)
	p := newPKI(t)
	host := tlsFront(t, p)

	d := New(Options{Host: host, TLSCA: p.ca, TLSCert: p.cert, TLSKey: p.key, HostID: "test-host"})
	if d.cgroups != nil {
		t.Error("a TCP endpoint must not use the local cgroup stats source")
	}
	ctx := testCtx(t, 60*time.Second)
	if err := d.Connect(ctx); err != nil {
		t.Fatalf("Connect over TLS: %v", err)
	}
	t.Cleanup(func() { d.Close() })
	h, err := d.Health(ctx)
	if err != nil || h.APIVersion == "" || h.Details["host"] != host {
		t.Fatalf("Health over TLS: %+v %v", h, err)
	}
	name := uniqueName("tls")
	createT(t, d, busybox(t, name, "sleep 60"))
	if _, err := d.Start(ctx, name); err != nil {
		t.Fatal(err)
	}
	u, err := d.Metrics(ctx, name)
	if err != nil || u.MemoryMB <= 0 {
		t.Errorf("Metrics over TLS (stats API): %+v %v", u, err)
	}

	// Without a client certificate the daemon cannot be reached.
	bad := New(Options{Host: host, TLSCA: p.ca})
	if err := bad.Connect(testCtx(t, 10*time.Second)); classify(err) != drivers.Unavailable && classify(err) != drivers.PermissionDenied {
		t.Errorf("Connect without a client certificate: %v (code %s), want unavailable or permission_denied", err, classify(err))
	}
	// A missing certificate file is a configuration error, not a crash.
	missing := New(Options{Host: host, TLSCA: filepath.Join(p.dir, "nope.pem"), TLSCert: p.cert, TLSKey: p.key})
	if err := missing.Connect(testCtx(t, 10*time.Second)); classify(err) != drivers.InvalidArgument {
		t.Errorf("Connect with a missing CA file: %v, want invalid_argument", err)
	}
}
