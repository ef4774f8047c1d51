package proxmox

import (
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/subbus/subbus/internal/drivers"
)

// httpClient is the HTTP client go-proxmox uses: bounded dial, TLS
// handshake, response headers and whole request, and one of three ways to
// trust the server: chain verification (system roots or ca_file), a
// pinned SHA-256 fingerprint, or — only with an explicit verify_ssl:
// false — none, logged loudly.
func (d *Driver) httpClient() (*http.Client, error) {
	tc, err := d.tlsConfig()
	if err != nil {
		return nil, err
	}
	tr := &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSClientConfig:       tc,
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: time.Duration(d.opts.RequestTimeout),
		IdleConnTimeout:       90 * time.Second,
		MaxIdleConnsPerHost:   8,
	}
	return &http.Client{Transport: tr, Timeout: time.Duration(d.opts.RequestTimeout)}, nil
}

func (d *Driver) tlsConfig() (*tls.Config, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if d.opts.CAFile != "" {
		pem, err := os.ReadFile(d.opts.CAFile)
		if err != nil {
			return nil, drivers.Errorf(drivers.InvalidArgument, "proxmox: ca_file: %v", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, drivers.Errorf(drivers.InvalidArgument, "proxmox: ca_file %s holds no PEM certificate", d.opts.CAFile)
		}
		tc.RootCAs = pool
	}
	switch {
	case d.opts.Fingerprint != "":
		want, err := parseFingerprint(d.opts.Fingerprint)
		if err != nil {
			return nil, drivers.Errorf(drivers.InvalidArgument, "proxmox: fingerprint: %v", err)
		}
		// The pin replaces chain and host name verification: PVE's
		// self-signed certificate has neither a trusted chain nor, often,
		// the name clients use.
		tc.InsecureSkipVerify = true
		tc.VerifyPeerCertificate = func(raw [][]byte, _ [][]*x509.Certificate) error {
			if len(raw) == 0 {
				return &certError{msg: "the server sent no certificate"}
			}
			got := sha256.Sum256(raw[0])
			if !bytes.Equal(got[:], want) {
				return &certError{msg: fmt.Sprintf("server certificate fingerprint %s does not match the pinned %s",
					formatFingerprint(got[:]), formatFingerprint(want))}
			}
			return nil
		}
	case d.opts.insecure():
		d.warnf("proxmox: verify_ssl is false: the server certificate is NOT verified, anyone on the path to %s can read the credentials; pin it with proxmox.fingerprint or trust its CA with proxmox.ca_file", d.opts.URL)
		tc.InsecureSkipVerify = true
	}
	return tc, nil
}

// certError is a server certificate that does not match the pin.
type certError struct{ msg string }

func (e *certError) Error() string { return "proxmox: " + e.msg }

// parseFingerprint reads a SHA-256 fingerprint: 64 hex digits, with or
// without colons, any case.
func parseFingerprint(s string) ([]byte, error) {
	h := strings.ReplaceAll(strings.TrimSpace(s), ":", "")
	b, err := hex.DecodeString(h)
	if err != nil || len(b) != sha256.Size {
		return nil, fmt.Errorf("%q is not a SHA-256 fingerprint (64 hex digits, colons allowed)", s)
	}
	return b, nil
}

// formatFingerprint prints a fingerprint as PVE does (AA:BB:…).
func formatFingerprint(b []byte) string {
	parts := make([]string, len(b))
	for i, x := range b {
		parts[i] = fmt.Sprintf("%02X", x)
	}
	return strings.Join(parts, ":")
}
