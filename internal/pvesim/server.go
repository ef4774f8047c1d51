package pvesim

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Seed is a starting inventory (cmd/pvesim --seed FILE, JSON or YAML).
type Seed struct {
	// Nodes, when set and Options.Nodes is not, name the cluster's nodes.
	Nodes  []string    `json:"nodes" yaml:"nodes"`
	Guests []GuestSpec `json:"guests" yaml:"guests"`
	// Volumes are extra storage volumes (ISOs, container templates).
	Volumes []VolumeSpec `json:"volumes" yaml:"volumes"`
	// VNets are SDN vnets (GET /cluster/sdn/vnets); none by default.
	VNets []VNetSpec `json:"vnets" yaml:"vnets"`
}

// VNetSpec is one SDN vnet.
type VNetSpec struct {
	VNet  string `json:"vnet" yaml:"vnet"`
	Zone  string `json:"zone" yaml:"zone"`
	Tag   int    `json:"tag" yaml:"tag"`
	Alias string `json:"alias" yaml:"alias"`
}

// VolumeSpec is one seeded volume.
type VolumeSpec struct {
	Node    string `json:"node" yaml:"node"` // default: every node
	VolID   string `json:"volid" yaml:"volid"`
	Content string `json:"content" yaml:"content"`
	Size    int64  `json:"size" yaml:"size"`
}

// LoadSeed reads a seed file (YAML, which includes JSON). Unknown keys
// are errors.
func LoadSeed(path string) (*Seed, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var seed Seed
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&seed); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &seed, nil
}

func (s *Sim) applySeed(seed *Seed) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, v := range seed.Volumes {
		for _, n := range s.nodes {
			if v.Node != "" && v.Node != n.name {
				continue
			}
			stID, _, ok := strings.Cut(v.VolID, ":")
			st := n.storage(stID)
			if !ok || st == nil {
				return fmt.Errorf("seed volume %q: no storage %q", v.VolID, stID)
			}
			content := v.Content
			if content == "" {
				content = strings.SplitN(strings.TrimPrefix(v.VolID, stID+":"), "/", 2)[0]
			}
			st.volumes[v.VolID] = &volume{volid: v.VolID, content: content, size: v.Size, format: "raw", ctime: time.Now().Unix()}
		}
	}
	for _, v := range seed.VNets {
		if !reConfigID.MatchString(v.VNet) || v.Zone == "" {
			return fmt.Errorf("seed vnet %q: want a vnet id and a zone", v.VNet)
		}
		s.vnets = append(s.vnets, v)
	}
	for _, g := range seed.Guests {
		if err := s.createGuestLocked(g); err != nil {
			return fmt.Errorf("seed: %w", err)
		}
	}
	return nil
}

// Server is a simulator served over HTTPS on a local port.
type Server struct {
	*Sim
	// URL is the base URL, e.g. https://127.0.0.1:40123 (the API is under
	// URL + "/api2/json").
	URL string
	// Fingerprint is the certificate's SHA-256 fingerprint in PVE's
	// notation (colon-separated upper-case hex).
	Fingerprint string
	// CertPEM is the self-signed certificate (for a CA pool).
	CertPEM []byte

	srv *http.Server
	ln  net.Listener
}

// APIURL is URL + "/api2/json".
func (s *Server) APIURL() string { return s.URL + apiPrefix }

// Start serves a new simulator over HTTPS with a fresh self-signed
// certificate on addr ("" = 127.0.0.1:0, a free port).
func Start(addr string, opts Options) (*Server, error) {
	sim, err := New(opts)
	if err != nil {
		return nil, err
	}
	return Serve(addr, sim)
}

// Serve serves sim over HTTPS on addr (see Start).
func Serve(addr string, sim *Sim) (*Server, error) {
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	cert, certPEM, fp, err := selfSigned()
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	sim.mu.Lock()
	sim.fingerprint = fp
	sim.mu.Unlock()
	srv := &http.Server{
		Handler: sim.Handler(),
		// HTTP/1.1 only, like pveproxy: errors travel in the reason phrase.
		TLSNextProto:      map[string]func(*http.Server, *tls.Conn, http.Handler){},
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          nil,
	}
	s := &Server{Sim: sim, Fingerprint: fp, CertPEM: certPEM, srv: srv, ln: ln,
		URL: "https://" + ln.Addr().String()}
	go func() { _ = srv.ServeTLS(ln, "", "") }()
	return s, nil
}

// Close stops the server (running tasks are abandoned).
func (s *Server) Close() error { return s.srv.Close() }

func selfSigned() (tls.Certificate, []byte, string, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, nil, "", err
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "pvesim", Organization: []string{"PVE Cluster Node (simulated)"}},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(2 * 365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     []string{"localhost", "pvesim"},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1")},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, nil, "", err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return tls.Certificate{}, nil, "", err
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return tls.Certificate{}, nil, "", err
	}
	return cert, certPEM, Fingerprint(der), nil
}

// Fingerprint formats the SHA-256 of a DER certificate as PVE shows it
// (AB:CD:...).
func Fingerprint(der []byte) string {
	sum := sha256.Sum256(der)
	parts := make([]string, len(sum))
	for i, b := range sum {
		parts[i] = fmt.Sprintf("%02X", b)
	}
	return strings.Join(parts, ":")
}
