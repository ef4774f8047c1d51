// Package docker is the subbus driver for a Docker Engine, spoken to
// through github.com/moby/moby/client. It works with any engine whose API
// is at least 1.41 (Debian's docker.io 20.10): the API version is
// negotiated on Connect.
//
// Every container this fleet creates carries owner labels (LabelManaged,
// LabelHost, LabelRequestID) and its creation template in LabelTemplate,
// so snapshot restore and clone recreate the same configuration and a
// retried create is recognized instead of duplicated.
package docker

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/moby/moby/client"

	"github.com/subbus/subbus/internal/config"
	"github.com/subbus/subbus/internal/drivers"
)

// Name is the driver's name in subjects and configuration.
const Name = "docker"

// Interface guards: the capabilities this driver implements.
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
)

// Options is the `docker` section of the configuration.
type Options struct {
	// Host is the daemon endpoint: unix:///var/run/docker.sock (default,
	// or DOCKER_HOST when set), tcp://host:2376, …
	Host string `yaml:"host"`
	// TLSCA, TLSCert, TLSKey are PEM files for a TCP endpoint with TLS.
	TLSCA   string `yaml:"tls_ca"`
	TLSCert string `yaml:"tls_cert"`
	TLSKey  string `yaml:"tls_key"`
	// APIVersion pins the API version; empty negotiates it (default).
	APIVersion string `yaml:"api_version"`
	// AllowPull lets Create pull a missing image (default false: a
	// missing image is not_found).
	AllowPull bool `yaml:"allow_pull"`
	// DefaultResources apply to a template that sets no resources.
	DefaultResources Resources `yaml:"default_resources"`
	// MetricsParallelism bounds concurrent stats requests in MetricsMany
	// (default 32: on the API path each request mostly waits for the
	// daemon's collection tick, so a wide bound costs little).
	MetricsParallelism int `yaml:"metrics_parallelism"`
	// StatsSource is where metrics come from: "auto" (default) reads a
	// local daemon's container cgroups directly when it can (Docker 20.10
	// answers even one-shot stats only at its next 1 s collection tick),
	// else the stats API; "api" always uses the API.
	StatsSource string `yaml:"stats_source"`
	// HostID is the owner label value (io.subbus.host); default
	// worker.host, else the machine's hostname.
	HostID string `yaml:"host_id"`

	// The manager's keys of this section (retries, timeouts, breaker),
	// read by the manager itself.
	config.SectionOptions `yaml:",inline"`
}

// Resources are resource limits in the configuration.
type Resources struct {
	CPUCores float64 `yaml:"cpu_cores"`
	MemoryMB int64   `yaml:"memory_mb"`
	PIDs     int64   `yaml:"pids"`
}

func (r Resources) limits() drivers.ResourceLimits {
	return drivers.ResourceLimits{CPUCores: r.CPUCores, MemoryMB: r.MemoryMB, PIDs: r.PIDs}
}

// OptionsFromConfig decodes the `docker` section of cfg, applying defaults.
// Unknown keys are errors naming the key.
func OptionsFromConfig(cfg *config.Config) (Options, error) {
	var o Options
	if cfg != nil {
		if err := cfg.Decode(Name, &o); err != nil {
			return Options{}, err
		}
		if o.HostID == "" {
			o.HostID = cfg.String("worker.host", "")
		}
	}
	if o.StatsSource != "" && o.StatsSource != StatsAuto && o.StatsSource != StatsAPI {
		return Options{}, &config.Error{Key: "docker.stats_source", Msg: fmt.Sprintf("%q: want auto or api", o.StatsSource)}
	}
	if o.MetricsParallelism < 0 {
		return Options{}, &config.Error{Key: "docker.metrics_parallelism", Msg: "must not be negative"}
	}
	if (o.TLSCert == "") != (o.TLSKey == "") {
		return Options{}, &config.Error{Key: "docker.tls_cert", Msg: "tls_cert and tls_key go together"}
	}
	return o.withDefaults(), nil
}

func (o Options) withDefaults() Options {
	if o.Host == "" {
		o.Host = os.Getenv(client.EnvOverrideHost)
	}
	if o.Host == "" {
		o.Host = client.DefaultDockerHost
	}
	if o.MetricsParallelism == 0 {
		o.MetricsParallelism = 32
	}
	if o.StatsSource == "" {
		o.StatsSource = StatsAuto
	}
	if o.HostID == "" {
		o.HostID, _ = os.Hostname()
	}
	return o
}

// Driver manages the containers of one Docker Engine. It is safe for
// concurrent use.
type Driver struct {
	opts Options

	mu  sync.RWMutex
	cli *client.Client
	// report is the last reconciliation (Connect).
	report Reconciliation

	stats   statsCache
	cgroups *cgroupStats // nil: stats API only
	watch   watchState
}

// New returns an unconnected driver.
func New(opts Options) *Driver {
	d := &Driver{opts: opts.withDefaults(), stats: statsCache{prev: map[string]sample{}}}
	if d.opts.StatsSource == StatsAuto && localSocket(d.opts.Host) {
		d.cgroups = newCgroupStats()
	}
	return d
}

// FromConfig builds the driver from the `docker` config section.
func FromConfig(cfg *config.Config) (drivers.Driver, error) {
	o, err := OptionsFromConfig(cfg)
	if err != nil {
		return nil, err
	}
	return New(o), nil
}

// Detect reports whether a Docker Engine answers at the configured
// endpoint, and why not.
func Detect(ctx context.Context, cfg *config.Config) error {
	o, err := OptionsFromConfig(cfg)
	if err != nil {
		return err
	}
	c, err := newClient(o)
	if err != nil {
		return err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	if _, err := c.Ping(ctx, client.PingOptions{NegotiateAPIVersion: true}); err != nil {
		return fmt.Errorf("docker at %s does not answer: %w", o.Host, err)
	}
	return nil
}

// Name implements drivers.Driver.
func (d *Driver) Name() string { return Name }

// Options returns the options in effect.
func (d *Driver) Options() Options { return d.opts }

func newClient(o Options) (*client.Client, error) {
	// Our own transport: the default one keeps only 2 idle connections
	// per host, which makes parallel stats collection redial constantly.
	tr := &http.Transport{MaxIdleConns: 64, MaxIdleConnsPerHost: 64, IdleConnTimeout: 30 * time.Second}
	ops := []client.Opt{
		client.WithHTTPClient(&http.Client{Transport: tr, CheckRedirect: client.CheckRedirect}),
		client.WithHost(o.Host),
		client.WithUserAgent("subbus-docker-driver"),
	}
	if o.TLSCA != "" || o.TLSCert != "" {
		ops = append(ops, client.WithTLSClientConfig(o.TLSCA, o.TLSCert, o.TLSKey), client.WithScheme("https"))
	} else {
		// Our transport would otherwise be taken for a TLS one.
		ops = append(ops, client.WithScheme("http"))
	}
	if o.APIVersion != "" {
		ops = append(ops, client.WithAPIVersion(o.APIVersion))
	}
	c, err := client.New(ops...)
	if err != nil {
		return nil, drivers.Errorf(drivers.InvalidArgument, "docker client for %s: %w", o.Host, err)
	}
	return c, nil
}

// Connect implements drivers.Driver: it (re)creates the client, negotiates
// the API version, and reconciles the managed containers it finds.
func (d *Driver) Connect(ctx context.Context) error {
	c, err := newClient(d.opts)
	if err != nil {
		return err
	}
	if _, err := c.Ping(ctx, client.PingOptions{NegotiateAPIVersion: true, ForceNegotiate: true}); err != nil {
		c.Close()
		return fmt.Errorf("connect to docker at %s: %w", d.opts.Host, err)
	}
	d.mu.Lock()
	old := d.cli
	d.cli = c
	d.mu.Unlock()
	if old != nil {
		old.Close()
	}
	rep, err := d.Reconcile(ctx)
	if err != nil {
		return err
	}
	d.mu.Lock()
	d.report = rep
	d.mu.Unlock()
	// The first Watch reports what changes from here on.
	if list, err := d.List(ctx); err == nil {
		d.watch.mu.Lock()
		if d.watch.cursor == nil {
			d.watch.cursor = &watchCursor{known: knownOf(list)}
		}
		d.watch.mu.Unlock()
	}
	return nil
}

// Close implements drivers.Driver. Containers keep running.
func (d *Driver) Close() error {
	d.mu.Lock()
	c := d.cli
	d.cli = nil
	d.mu.Unlock()
	if c != nil {
		return c.Close()
	}
	return nil
}

// client returns the connected client, or Unavailable before Connect.
func (d *Driver) client() (*client.Client, error) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if d.cli == nil {
		return nil, drivers.Errorf(drivers.Unavailable, "docker: not connected")
	}
	return d.cli, nil
}

// APIVersion returns the negotiated API version ("" before Connect).
func (d *Driver) APIVersion() string {
	c, err := d.client()
	if err != nil {
		return ""
	}
	return c.ClientVersion()
}
