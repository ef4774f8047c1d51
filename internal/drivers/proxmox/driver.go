// Package proxmox is the subbus driver for Proxmox VE: QEMU virtual
// machines and LXC containers, side by side, over the PVE HTTP API with
// github.com/luthermonson/go-proxmox (v0.9.0).
//
// Contracts beyond internal/drivers (docs/proxmox.md says the same for
// users):
//   - An instance is a guest. Its name is the guest's name (QEMU `name`,
//     LXC `hostname`); a name made only of digits addresses the guest by
//     VMID, so `101` is VMID 101 whatever it is called. A name that several
//     guests share is Conflict listing their VMIDs. Every instance carries
//     metadata `kind` (qemu|lxc), `vmid` and `node`.
//   - Every asynchronous PVE call returns a UPID; the driver waits for
//     that task under the caller's ctx and its exitstatus decides: "OK"
//     and "WARNINGS: n" succeed, any other text is the error (classified
//     in ErrorCode).
//   - Guests this driver creates carry the tag `subbus` and a marker line
//     in their description (image, user metadata, a create id). Delete
//     purges them with their unreferenced disks; a guest without the tag
//     is deleted only with force, and then without purge.
//   - A create whose caller gives up is reconciled in the background: the
//     driver chose the VMID, so once the PVE task ends it removes that
//     guest if it carries this create's id. Nothing half-made stays.
//   - go-proxmox's own retry is never enabled (the manager retries
//     idempotent calls); its HTTP client has timeouts.
package proxmox

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	gp "github.com/luthermonson/go-proxmox"
	"github.com/rs/zerolog/log"

	"github.com/subbus/subbus/internal/config"
	"github.com/subbus/subbus/internal/drivers"
)

// Name is the driver's name in subjects and configuration.
const Name = "proxmox"

// Options is the `proxmox` section of the configuration.
type Options struct {
	// URL of the API, https://host:8006 (a trailing /api2/json is
	// accepted). Required to connect.
	URL string `yaml:"url"`
	// User is the ticket-auth user (root@pam), used with Password or
	// PasswordFile when no token is configured.
	User         string `yaml:"user"`
	Password     string `yaml:"password"`
	PasswordFile string `yaml:"password_file"`
	// TokenID (user@realm!name) and TokenSecret (or TokenSecretFile) are
	// API-token auth, preferred over a password.
	TokenID         string `yaml:"token_id"`
	TokenSecret     string `yaml:"token_secret"`
	TokenSecretFile string `yaml:"token_secret_file"`
	// VerifySSL verifies the server certificate against the system roots
	// (or CAFile). Only an explicit false turns it off (logged loudly).
	VerifySSL *bool `yaml:"verify_ssl"`
	// CAFile is a PEM bundle of the CAs to trust for the server.
	CAFile string `yaml:"ca_file"`
	// Fingerprint pins the server certificate by its SHA-256 fingerprint
	// (hex, colons optional), as `pvenode cert info` prints it. When set,
	// it replaces chain verification.
	Fingerprint string `yaml:"fingerprint"`

	// Node is where new guests are created; empty: the first online node
	// (sorted by name).
	Node string `yaml:"node"`
	// Storage holds new disks (QEMU scsi0, LXC rootfs).
	Storage string `yaml:"storage"`
	// Bridge is the bridge of the one NIC a created guest gets when its
	// template names no network.
	Bridge string `yaml:"bridge"`
	// DefaultKind is the guest type of a create whose template does not
	// say (metadata kind) and whose base_image does not imply one.
	DefaultKind string `yaml:"default_kind"`
	// DiskGB is the disk size of a created guest when the template gives
	// no resources.disk_gb.
	DiskGB int `yaml:"disk_gb"`
	// FullClone makes clones (and creates from a template guest) full
	// copies; false makes linked clones where PVE can (the source is a
	// template on storage that supports it).
	FullClone *bool `yaml:"full_clone"`
	// SnapshotVMState includes the RAM of running QEMU VMs in snapshots.
	SnapshotVMState bool `yaml:"snapshot_vmstate"`
	// QemuAgent enables the guest agent option on created VMs (exec needs
	// the agent running in the guest).
	QemuAgent *bool `yaml:"qemu_agent"`
	// LXCUnprivileged creates containers unprivileged (PVE's UI default;
	// the API's default is privileged).
	LXCUnprivileged *bool `yaml:"lxc_unprivileged"`

	// RequestTimeout bounds one HTTP request.
	RequestTimeout config.Duration `yaml:"request_timeout"`
	// TaskPollInterval is how often a task's status is polled.
	TaskPollInterval config.Duration `yaml:"task_poll_interval"`
	// EventPollInterval is how often /cluster/resources and /cluster/tasks
	// are polled for the native event feed (the feed's latency).
	EventPollInterval config.Duration `yaml:"event_poll_interval"`
	// LogPollInterval is how often a followed log re-reads the task list.
	LogPollInterval config.Duration `yaml:"log_poll_interval"`
	// ReconcileTimeout bounds the background cleanup of an abandoned create.
	ReconcileTimeout config.Duration `yaml:"reconcile_timeout"`

	// The manager's keys of this section (retries, timeouts, breaker),
	// read by the manager itself.
	config.SectionOptions `yaml:",inline"`
}

// DefaultOptions are the defaults of the `proxmox` section.
func DefaultOptions() Options {
	return Options{
		Storage:           "local-lvm",
		Bridge:            "vmbr0",
		DefaultKind:       kindQemu,
		DiskGB:            8,
		RequestTimeout:    config.Duration(30 * time.Second),
		TaskPollInterval:  config.Duration(500 * time.Millisecond),
		EventPollInterval: config.Duration(2 * time.Second),
		LogPollInterval:   config.Duration(2 * time.Second),
		ReconcileTimeout:  config.Duration(10 * time.Minute),
	}
}

// OptionsFromConfig decodes the `proxmox` section over the defaults and
// checks it. A bad value is a *config.Error naming the key.
func OptionsFromConfig(cfg *config.Config) (Options, error) {
	o := DefaultOptions()
	if cfg != nil {
		if err := cfg.Decode(Name, &o); err != nil {
			return o, err
		}
	}
	return o, o.check()
}

func (o *Options) check() error {
	bad := func(key, format string, args ...any) error {
		return &config.Error{Key: Name + "." + key, Msg: fmt.Sprintf(format, args...)}
	}
	if o.URL != "" {
		u, err := url.Parse(o.URL)
		if err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http") {
			return bad("url", "%q is not an http(s) URL", o.URL)
		}
	}
	if o.Password != "" && o.PasswordFile != "" {
		return bad("password_file", "set password or password_file, not both")
	}
	if o.TokenSecret != "" && o.TokenSecretFile != "" {
		return bad("token_secret_file", "set token_secret or token_secret_file, not both")
	}
	if (o.TokenSecret != "" || o.TokenSecretFile != "") && o.TokenID == "" {
		return bad("token_id", "a token secret needs token_id (user@realm!name)")
	}
	if o.TokenID != "" && !strings.Contains(o.TokenID, "!") {
		return bad("token_id", "%q is not user@realm!name", o.TokenID)
	}
	if o.Fingerprint != "" {
		if _, err := parseFingerprint(o.Fingerprint); err != nil {
			return bad("fingerprint", "%v", err)
		}
	}
	if o.DefaultKind != kindQemu && o.DefaultKind != kindLXC {
		return bad("default_kind", "%q: want qemu or lxc", o.DefaultKind)
	}
	if o.DiskGB <= 0 {
		return bad("disk_gb", "must be > 0")
	}
	for key, v := range map[string]config.Duration{
		"request_timeout": o.RequestTimeout, "task_poll_interval": o.TaskPollInterval,
		"event_poll_interval": o.EventPollInterval, "log_poll_interval": o.LogPollInterval,
		"reconcile_timeout": o.ReconcileTimeout,
	} {
		if v <= 0 {
			return bad(key, "must be > 0")
		}
	}
	return nil
}

// fullClone reports whether clones are full copies (the default).
func (o *Options) fullClone() bool { return o.FullClone == nil || *o.FullClone }

// qemuAgent reports whether created VMs get agent=1 (the default).
func (o *Options) qemuAgent() bool { return o.QemuAgent == nil || *o.QemuAgent }

// lxcUnprivileged reports whether created containers are unprivileged (the default).
func (o *Options) lxcUnprivileged() bool { return o.LXCUnprivileged == nil || *o.LXCUnprivileged }

// insecure reports whether certificate verification was turned off explicitly.
func (o *Options) insecure() bool { return o.VerifySSL != nil && !*o.VerifySSL && o.Fingerprint == "" }

// Driver is the Proxmox VE driver. It is safe for concurrent use.
type Driver struct {
	opts Options
	// warnf reports configuration that weakens security (verify_ssl: false).
	warnf func(format string, args ...any)

	mu   sync.Mutex
	c    *gp.Client
	node string // where creates go

	metricsMu sync.Mutex
	prev      map[int]sample // previous metrics sample per VMID

	watchMu sync.Mutex
	known   map[int]resource // guests seen by the last poll of Watch

	bg sync.WaitGroup // reconciliations of abandoned creates

	pendingMu sync.Mutex
	pending   map[string]chan struct{} // name → closed when its reconciliation ends
}

var (
	_ drivers.Driver         = (*Driver)(nil)
	_ drivers.Execer         = (*Driver)(nil)
	_ drivers.LogReader      = (*Driver)(nil)
	_ drivers.Limiter        = (*Driver)(nil)
	_ drivers.Snapshotter    = (*Driver)(nil)
	_ drivers.Cloner         = (*Driver)(nil)
	_ drivers.Networker      = (*Driver)(nil)
	_ drivers.Restarter      = (*Driver)(nil)
	_ drivers.EventSource    = (*Driver)(nil)
	_ drivers.MetricsBatcher = (*Driver)(nil)
	_ drivers.ClusterWide    = (*Driver)(nil)
)

// ClusterWide implements drivers.ClusterWide: a PVE cluster's guests are
// reachable through any node's API, from every worker configured with it.
func (d *Driver) ClusterWide() bool { return true }

// New returns an unconnected driver. opts must have passed
// OptionsFromConfig's checks (or come from DefaultOptions).
func New(opts Options) *Driver {
	return &Driver{opts: opts, prev: map[int]sample{}, warnf: func(format string, args ...any) {
		log.Warn().Str("driver", Name).Msgf(format, args...)
	}}
}

// FromConfig builds the driver from the configuration's `proxmox`
// section. It does not connect.
func FromConfig(cfg *config.Config) (drivers.Driver, error) {
	o, err := OptionsFromConfig(cfg)
	if err != nil {
		return nil, err
	}
	return New(o), nil
}

// Detect reports whether a PVE API answers at the configured URL with the
// configured credentials.
func Detect(ctx context.Context, cfg *config.Config) error {
	o, err := OptionsFromConfig(cfg)
	if err != nil {
		return err
	}
	if o.URL == "" {
		return fmt.Errorf("proxmox.url is not set")
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	d := New(o)
	defer d.Close()
	return d.Connect(ctx)
}

// Name is "proxmox".
func (d *Driver) Name() string { return Name }

// Connect builds the API client, logs in (ticket auth) and reads
// /version, then picks the node creates go to. It may be called again to
// reconnect.
func (d *Driver) Connect(ctx context.Context) error {
	if d.opts.URL == "" {
		return drivers.Errorf(drivers.InvalidArgument, "proxmox: proxmox.url is not set")
	}
	c, err := d.newClient(ctx)
	if err != nil {
		return err
	}
	var v gp.Version
	if err := c.Get(ctx, "/version", &v); err != nil {
		return fmt.Errorf("proxmox: GET /version: %w", err)
	}
	node, err := d.pickNode(ctx, c)
	if err != nil {
		return err
	}
	d.mu.Lock()
	d.c, d.node = c, node
	d.mu.Unlock()
	return nil
}

// newClient builds an authenticated go-proxmox client.
func (d *Driver) newClient(ctx context.Context) (*gp.Client, error) {
	hc, err := d.httpClient()
	if err != nil {
		return nil, err
	}
	base := strings.TrimRight(d.opts.URL, "/")
	if !strings.HasSuffix(base, "/api2/json") {
		base += "/api2/json"
	}
	opts := []gp.Option{gp.WithHTTPClient(hc), gp.WithUserAgent("subbus-proxmox")}
	secret, err := secretOf(d.opts.TokenSecret, d.opts.TokenSecretFile, "token_secret_file")
	if err != nil {
		return nil, err
	}
	if d.opts.TokenID != "" {
		c := gp.NewClient(base, append(opts, gp.WithAPIToken(d.opts.TokenID, secret))...)
		return c, nil
	}
	pw, err := secretOf(d.opts.Password, d.opts.PasswordFile, "password_file")
	if err != nil {
		return nil, err
	}
	if d.opts.User == "" || pw == "" {
		return nil, drivers.Errorf(drivers.InvalidArgument, "proxmox: no credentials: set token_id + token_secret, or user + password")
	}
	c := gp.NewClient(base, append(opts, gp.WithCredentials(&gp.Credentials{Username: d.opts.User, Password: pw}))...)
	// Log in now: a first request without a ticket would cost PVE's
	// delayed 401 before go-proxmox logs in.
	if err := c.CreateSession(ctx); err != nil {
		return nil, fmt.Errorf("proxmox: login as %s: %w", d.opts.User, err)
	}
	return c, nil
}

// secretOf returns the literal secret or the trimmed content of file.
func secretOf(literal, file, key string) (string, error) {
	if file == "" {
		return literal, nil
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return "", drivers.Errorf(drivers.InvalidArgument, "proxmox: %s: %v", key, err)
	}
	return strings.TrimSpace(string(b)), nil
}

// pickNode returns the configured node (checked to exist) or the first
// online node.
func (d *Driver) pickNode(ctx context.Context, c *gp.Client) (string, error) {
	var nodes []nodeEntry
	if err := c.Get(ctx, "/nodes", &nodes); err != nil {
		return "", fmt.Errorf("proxmox: GET /nodes: %w", err)
	}
	sortNodes(nodes)
	for _, n := range nodes {
		if d.opts.Node != "" && n.Node == d.opts.Node {
			return n.Node, nil
		}
	}
	if d.opts.Node != "" {
		return "", drivers.Errorf(drivers.InvalidArgument, "proxmox: proxmox.node %q is not a node of this cluster", d.opts.Node)
	}
	for _, n := range nodes {
		if n.Status == "online" {
			return n.Node, nil
		}
	}
	if len(nodes) > 0 {
		return nodes[0].Node, nil
	}
	return "", drivers.Errorf(drivers.Conflict, "proxmox: the cluster lists no node")
}

// Close waits (bounded) for the reconciliation of abandoned creates and
// drops idle connections. Guests keep running.
func (d *Driver) Close() error {
	done := make(chan struct{})
	go func() { d.bg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
	}
	return nil
}

// conn returns the connected client and the create node.
func (d *Driver) conn() (*gp.Client, string, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.c == nil {
		return nil, "", drivers.Errorf(drivers.Unavailable, "proxmox: not connected")
	}
	return d.c, d.node, nil
}
