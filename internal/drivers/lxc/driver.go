// Package lxc is the subbus driver for LXD and Incus system containers. It
// speaks their shared REST API itself with net/http (no upstream client
// module), over the local unix socket or HTTPS with a client certificate
// and a pinned server certificate, and their lifecycle event websocket for
// the native event feed.
//
// LXD and Incus are told apart by GET /1.0 (environment.server); the few
// places where they differ are handled where they arise and listed in
// docs/lxc.md.
package lxc

import (
	"context"
	"errors"
	"net/http"
	"net/netip"
	"net/url"
	"sync"
	"time"

	"github.com/subbus/subbus/internal/config"
	"github.com/subbus/subbus/internal/drivers"
)

// Name is the driver's name in subjects and configuration.
const Name = "lxc"

// Options is the `lxc` section of the configuration.
type Options struct {
	// Socket is the local unix socket; empty auto-detects Incus then LXD.
	Socket string `yaml:"socket"`
	// URL of a remote server (https://host:8443); it takes precedence over
	// the socket and needs the three TLS files below.
	URL           string `yaml:"url"`
	TLSClientCert string `yaml:"tls_client_cert"`
	TLSClientKey  string `yaml:"tls_client_key"`
	// ServerCert is the remote server's certificate (PEM), pinned.
	ServerCert string `yaml:"server_cert"`
	// ClusterWide says whether several workers reach the same server, so
	// that their workers share its instances (drivers.ClusterWide,
	// docs/fleet.md). Unset: true for a url whose host is not a loopback
	// address (a remote LXD/Incus or a cluster member reached over the
	// network), false for the local socket and loopback URLs. Set it to
	// true for an LXD/Incus cluster every member of which runs a worker on
	// its local socket.
	ClusterWide *bool `yaml:"cluster_wide"`
	// Project scopes every request; empty is the server's default project.
	Project string `yaml:"project"`
	// DefaultProfile is applied to instances created here.
	DefaultProfile string `yaml:"default_profile"`
	// DefaultImage is used when a template names no image (alias or
	// fingerprint of a local image).
	DefaultImage string `yaml:"default_image"`
	// StoragePool holds custom volumes named in templates' volumes.
	StoragePool string `yaml:"storage_pool"`
	// LogPollInterval is how often a followed console log is re-read.
	LogPollInterval config.Duration `yaml:"log_poll_interval"`

	// The manager's keys of this section (retries, timeouts, breaker),
	// read by the manager itself.
	config.SectionOptions `yaml:",inline"`
}

// DefaultOptions are the defaults of the `lxc` section.
func DefaultOptions() Options {
	return Options{
		DefaultProfile:  "default",
		DefaultImage:    "",
		StoragePool:     "default",
		LogPollInterval: config.Duration(500 * time.Millisecond),
	}
}

// OptionsFromConfig decodes the `lxc` section over the defaults.
func OptionsFromConfig(cfg *config.Config) (Options, error) {
	o := DefaultOptions()
	if cfg != nil {
		if err := cfg.Decode(Name, &o); err != nil {
			return o, err
		}
	}
	if o.LogPollInterval <= 0 {
		o.LogPollInterval = config.Duration(500 * time.Millisecond)
	}
	return o, nil
}

// server is what GET /1.0 says about the server.
type server struct {
	APIExtensions []string `json:"api_extensions"`
	APIVersion    string   `json:"api_version"`
	Auth          string   `json:"auth"`
	Environment   struct {
		Server        string `json:"server"` // "lxd" or "incus"
		ServerVersion string `json:"server_version"`
		ServerName    string `json:"server_name"`
		Kernel        string `json:"kernel_version"`
		Driver        string `json:"driver"`
		DriverVersion string `json:"driver_version"`
	} `json:"environment"`
}

// isIncus reports whether the server is Incus rather than LXD.
func (s *server) isIncus() bool { return s.Environment.Server == "incus" }

// has reports whether the server has an API extension.
func (s *server) has(ext string) bool {
	for _, e := range s.APIExtensions {
		if e == ext {
			return true
		}
	}
	return false
}

// Driver is the LXD/Incus driver. It is safe for concurrent use.
type Driver struct {
	opts Options

	mu  sync.Mutex
	c   *client
	srv *server

	metricsMu sync.Mutex
	prev      map[string]sample // previous metrics sample per instance

	consoleMu sync.Mutex
	consoles  map[string][]byte // console output read so far, per instance

	watchMu sync.Mutex
	known   map[string]drivers.State // last states seen by Watch, for resyncs

	bg sync.WaitGroup // cleanups of abandoned creates
}

var (
	_ drivers.Driver      = (*Driver)(nil)
	_ drivers.Execer      = (*Driver)(nil)
	_ drivers.LogReader   = (*Driver)(nil)
	_ drivers.Limiter     = (*Driver)(nil)
	_ drivers.Snapshotter = (*Driver)(nil)
	_ drivers.Cloner      = (*Driver)(nil)
	_ drivers.Networker   = (*Driver)(nil)
	_ drivers.Restarter   = (*Driver)(nil)
	_ drivers.EventSource = (*Driver)(nil)
	_ drivers.ClusterWide = (*Driver)(nil)
)

// ClusterWide implements drivers.ClusterWide: lxc.cluster_wide when set,
// else whether lxc.url names a host that is not a loopback address.
func (d *Driver) ClusterWide() bool {
	if d.opts.ClusterWide != nil {
		return *d.opts.ClusterWide
	}
	if d.opts.URL == "" {
		return false
	}
	u, err := url.Parse(d.opts.URL)
	if err != nil {
		return false
	}
	h := u.Hostname()
	if h == "localhost" {
		return false
	}
	ip, err := netip.ParseAddr(h)
	return err != nil || !ip.IsLoopback()
}

// New returns an unconnected driver.
func New(opts Options) *Driver {
	return &Driver{opts: opts, prev: map[string]sample{}}
}

// FromConfig builds the driver from the configuration's `lxc` section.
func FromConfig(cfg *config.Config) (drivers.Driver, error) {
	o, err := OptionsFromConfig(cfg)
	if err != nil {
		return nil, err
	}
	if o.URL == "" && (o.TLSClientCert != "" || o.TLSClientKey != "" || o.ServerCert != "") {
		return nil, &config.Error{Key: "lxc.url", Msg: "TLS files are set but no url"}
	}
	if o.URL != "" {
		if _, err := tlsConfig(o); err != nil {
			return nil, &config.Error{Key: "lxc.url", Msg: err.Error()}
		}
	}
	return New(o), nil
}

// Detect reports whether an LXD or Incus server answers with the
// configuration's transport.
func Detect(ctx context.Context, cfg *config.Config) error {
	o, err := OptionsFromConfig(cfg)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	c, err := newClient(o)
	if err != nil {
		return err
	}
	var s server
	if _, err := c.query(ctx, http.MethodGet, "/1.0", nil, &s); err != nil {
		return err
	}
	return nil
}

// Name implements drivers.Driver.
func (d *Driver) Name() string { return Name }

// Connect finds the server, reads GET /1.0 and checks that this client is
// trusted. It may be called again to reconnect.
func (d *Driver) Connect(ctx context.Context) error {
	c, err := newClient(d.opts)
	if err != nil {
		var ce *connError
		if errors.As(err, &ce) {
			return err
		}
		return drivers.Errorf(drivers.InvalidArgument, "lxc: %v", err)
	}
	var s server
	if _, err := c.query(ctx, http.MethodGet, "/1.0", nil, &s); err != nil {
		return err
	}
	if s.Auth != "" && s.Auth != "trusted" {
		return drivers.Errorf(drivers.PermissionDenied, "lxc: the server does not trust this client (auth=%q)", s.Auth)
	}
	d.mu.Lock()
	old := d.c
	d.c, d.srv = c, &s
	d.mu.Unlock()
	if old != nil {
		old.http.CloseIdleConnections()
	}
	return nil
}

// Close drops idle connections and waits (bounded) for the cleanup of
// abandoned creates. Instances keep running.
func (d *Driver) Close() error {
	done := make(chan struct{})
	go func() { d.bg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.c != nil {
		d.c.http.CloseIdleConnections()
	}
	return nil
}

// conn returns the connected client and server info.
func (d *Driver) conn() (*client, *server, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.c == nil {
		return nil, nil, drivers.Errorf(drivers.Unavailable, "lxc: not connected")
	}
	return d.c, d.srv, nil
}
