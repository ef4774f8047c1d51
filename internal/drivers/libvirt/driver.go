// Package libvirt is the subbus driver for libvirt (QEMU/KVM) domains. It
// speaks libvirt's RPC protocol with github.com/digitalocean/go-libvirt (pure
// Go, no cgo) and writes every XML document with libvirt.org/go/libvirtxml.
//
// Contracts beyond internal/drivers (see docs/libvirt.md):
//   - An instance is a domain. Domains this driver created carry an owner
//     marker in their <metadata> (namespace OwnerNS) listing the volumes
//     it created; Delete removes only those volumes.
//   - Create makes a qcow2 overlay of the template's base_image (a volume
//     of the configured pool, or a volume path) and never writes the base.
//   - The connection is not re-established by the driver itself: when
//     libvirtd goes away every call answers Unavailable and the manager's
//     ensure-connected loop calls Connect again, which dials anew; Watch
//     then re-registers its event callback and resyncs.
//   - go-libvirt calls take no context: reads run in a goroutine the
//     caller stops waiting for when its ctx ends; mutations check ctx
//     between steps and undo what a cancelled Create had made.
package libvirt

import (
	"context"
	"fmt"
	"net/url"
	"sync"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"

	"github.com/subbus/subbus/internal/config"
	"github.com/subbus/subbus/internal/drivers"
)

// Name is the driver's name in subjects and its configuration section.
const Name = "libvirt"

// Options is the `libvirt` section of the configuration.
type Options struct {
	// URI is the libvirt connection URI: qemu:///system (default),
	// qemu+tcp://host/system, qemu+tls://host/system?pkipath=…,
	// qemu+ssh://user@host/system?keyfile=…, test:///default.
	URI string `yaml:"uri"`
	// Pool is the storage pool where overlays (and clones' disks) are
	// created and where a base_image that is not a path is looked up.
	Pool string `yaml:"pool"`
	// DomainType is auto (probe KVM once with a real boot, else TCG), kvm
	// or qemu (TCG).
	DomainType string `yaml:"domain_type"`
	// Machine is the QEMU machine type of created domains (default q35).
	Machine string `yaml:"machine"`
	// Kernel, Initrd and Cmdline are the default direct kernel boot of
	// created domains; a template's metadata libvirt.kernel,
	// libvirt.initrd and libvirt.cmdline override them. Empty Kernel
	// boots from the disk (BIOS).
	Kernel  string `yaml:"kernel"`
	Initrd  string `yaml:"initrd"`
	Cmdline string `yaml:"cmdline"`
	// ConsoleLogDir is where each domain's serial console is logged
	// (<dir>/<name>.console.log), on the libvirtd host; Logs reads it,
	// so logs need this path to be readable by the driver (a local URI).
	ConsoleLogDir string `yaml:"console_log_dir"`
	// MemoryMB and VCPUs are used when a template's resources leave them 0.
	MemoryMB int64 `yaml:"memory_mb"`
	VCPUs    int   `yaml:"vcpus"`
	// MaxMemoryMB and MaxVCPUs are the maxima set at create, so limits can
	// be raised live up to them; 0 means twice the initial value.
	MaxMemoryMB int64 `yaml:"max_memory_mb"`
	MaxVCPUs    int   `yaml:"max_vcpus"`
	// ProbeKernel and ProbeInitrd boot the KVM probe of domain_type auto
	// (default: Kernel and Initrd); without a kernel the probe only
	// checks that /dev/kvm exists on a local URI.
	ProbeKernel string `yaml:"probe_kernel"`
	ProbeInitrd string `yaml:"probe_initrd"`
	// AgentWait is how long Exec waits for a running domain's guest
	// agent to connect (a booting guest starts it late) before answering
	// Conflict.
	AgentWait config.Duration `yaml:"agent_wait"`
	// LogPollInterval is how often a followed console log is re-read.
	LogPollInterval config.Duration `yaml:"log_poll_interval"`

	// The manager's keys of this section (retries, timeouts, breaker),
	// read by the manager itself.
	config.SectionOptions `yaml:",inline"`
}

// DefaultOptions are the defaults of the `libvirt` section.
func DefaultOptions() Options {
	return Options{
		URI:             "qemu:///system",
		Pool:            "default",
		DomainType:      "auto",
		Machine:         "q35",
		Cmdline:         "console=ttyS0 panic=-1",
		ConsoleLogDir:   "/var/log/libvirt/qemu",
		MemoryMB:        256,
		VCPUs:           1,
		AgentWait:       config.Duration(60 * time.Second),
		LogPollInterval: config.Duration(250 * time.Millisecond),
	}
}

// OptionsFromConfig decodes the `libvirt` section over the defaults and
// checks it; a bad value is a *config.Error naming the key.
func OptionsFromConfig(cfg *config.Config) (Options, error) {
	o := DefaultOptions()
	if cfg != nil {
		if err := cfg.Decode(Name, &o); err != nil {
			return o, err
		}
	}
	if _, err := url.Parse(o.URI); err != nil || o.URI == "" {
		return o, &config.Error{Key: "libvirt.uri", Msg: fmt.Sprintf("not a libvirt URI: %q", o.URI)}
	}
	switch o.DomainType {
	case "auto", "kvm", "qemu":
	default:
		return o, &config.Error{Key: "libvirt.domain_type", Msg: fmt.Sprintf("%q: must be auto, kvm or qemu", o.DomainType)}
	}
	if o.Pool == "" {
		return o, &config.Error{Key: "libvirt.pool", Msg: "must not be empty"}
	}
	if o.MemoryMB <= 0 || o.VCPUs <= 0 || o.MaxMemoryMB < 0 || o.MaxVCPUs < 0 {
		return o, &config.Error{Key: "libvirt.memory_mb", Msg: "memory_mb and vcpus must be > 0, the maxima >= 0"}
	}
	if o.LogPollInterval <= 0 {
		o.LogPollInterval = config.Duration(250 * time.Millisecond)
	}
	return o, nil
}

// Driver is the libvirt driver. It is safe for concurrent use.
type Driver struct {
	opts Options

	mu sync.Mutex
	l  *golibvirt.Libvirt // nil until connected

	metricsMu sync.Mutex
	prev      map[string]cpuSample // previous cpu sample per domain UUID

	hubMu sync.Mutex
	hub   *hub // the lifecycle-event registration shared by watchers

	afterStep func(step string) // test hook: called after each mutating step of Create

	watchMu sync.Mutex
	known   map[string]drivers.State // states last seen by Watch, for resyncs
}

var (
	_ drivers.Driver         = (*Driver)(nil)
	_ drivers.Execer         = (*Driver)(nil)
	_ drivers.LogReader      = (*Driver)(nil)
	_ drivers.Limiter        = (*Driver)(nil)
	_ drivers.Snapshotter    = (*Driver)(nil)
	_ drivers.Cloner         = (*Driver)(nil)
	_ drivers.Networker      = (*Driver)(nil)
	_ drivers.EventSource    = (*Driver)(nil)
	_ drivers.MetricsBatcher = (*Driver)(nil)
)

// New returns an unconnected driver.
func New(opts Options) *Driver {
	return &Driver{opts: opts, prev: map[string]cpuSample{}}
}

// FromConfig builds the driver from the configuration's `libvirt`
// section. It does not connect.
func FromConfig(cfg *config.Config) (drivers.Driver, error) {
	o, err := OptionsFromConfig(cfg)
	if err != nil {
		return nil, err
	}
	return New(o), nil
}

// Detect reports whether libvirtd answers at the configured URI.
func Detect(ctx context.Context, cfg *config.Config) error {
	o, err := OptionsFromConfig(cfg)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	l, err := dial(ctx, o.URI)
	if err != nil {
		return err
	}
	_ = l.Disconnect()
	return nil
}

// Name is "libvirt".
func (d *Driver) Name() string { return Name }

// dial connects to uri, giving up when ctx ends (the dial then finishes in
// the background and is closed).
func dial(ctx context.Context, uri string) (*golibvirt.Libvirt, error) {
	u, err := url.Parse(uri)
	if err != nil {
		return nil, drivers.Errorf(drivers.InvalidArgument, "libvirt.uri %q: %v", uri, err)
	}
	type res struct {
		l   *golibvirt.Libvirt
		err error
	}
	ch := make(chan res, 1)
	go func() {
		l, err := golibvirt.ConnectToURI(u)
		ch <- res{l, err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			return nil, &connError{uri: uri, err: r.err}
		}
		return r.l, nil
	case <-ctx.Done():
		go func() {
			if r := <-ch; r.l != nil {
				_ = r.l.Disconnect()
			}
		}()
		return nil, fmt.Errorf("connecting to %s: %w", uri, ctx.Err())
	}
}

// Connect dials libvirtd at the configured URI. It is idempotent: with a
// live connection it does nothing; after the connection was lost it dials
// anew (Watch re-registers its events on the new connection).
func (d *Driver) Connect(ctx context.Context) error {
	d.mu.Lock()
	if d.l != nil && d.l.IsConnected() {
		d.mu.Unlock()
		return nil
	}
	d.mu.Unlock()
	l, err := dial(ctx, d.opts.URI)
	if err != nil {
		return err
	}
	d.mu.Lock()
	old := d.l
	if old != nil && old.IsConnected() {
		// A concurrent Connect won: keep its connection.
		d.mu.Unlock()
		_ = l.Disconnect()
		return nil
	}
	d.l = l
	d.mu.Unlock()
	d.baseline(ctx)
	return nil
}

// baseline records the domains' states at the first connection, so that
// the first Watch, even one that starts late, reports what changed since.
func (d *Driver) baseline(ctx context.Context) {
	d.watchMu.Lock()
	have := d.known != nil
	d.watchMu.Unlock()
	if have {
		return
	}
	list, err := d.List(ctx)
	if err != nil {
		return
	}
	d.watchMu.Lock()
	defer d.watchMu.Unlock()
	if d.known == nil {
		d.known = map[string]drivers.State{}
		for _, in := range list {
			d.known[in.Name] = in.State
		}
	}
}

// Close disconnects. Domains keep running.
func (d *Driver) Close() error {
	d.closeHub()
	d.mu.Lock()
	l := d.l
	d.l = nil
	d.mu.Unlock()
	if l != nil && l.IsConnected() {
		done := make(chan struct{})
		go func() { _ = l.Disconnect(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
		}
	}
	return nil
}

// conn returns the live connection, or an Unavailable error.
func (d *Driver) conn() (*golibvirt.Libvirt, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.l == nil {
		return nil, &connError{uri: d.opts.URI, err: errNotConnected}
	}
	if !d.l.IsConnected() {
		return nil, &connError{uri: d.opts.URI, err: errConnectionLost}
	}
	return d.l, nil
}

// call runs fn (a go-libvirt call, which takes no context) and stops
// waiting when ctx ends. Use it for reads and for mutations whose late
// completion is harmless.
func call[T any](ctx context.Context, fn func() (T, error)) (T, error) {
	var zero T
	if err := ctx.Err(); err != nil {
		return zero, err
	}
	type res struct {
		v   T
		err error
	}
	ch := make(chan res, 1)
	go func() {
		v, err := fn()
		ch <- res{v, err}
	}()
	select {
	case r := <-ch:
		return r.v, r.err
	case <-ctx.Done():
		return zero, ctx.Err()
	}
}

// call0 is call for functions returning only an error.
func call0(ctx context.Context, fn func() error) error {
	_, err := call(ctx, func() (struct{}, error) { return struct{}{}, fn() })
	return err
}

// NameRule: the generic rule (drivers.ValidateName), stated for this
// substrate.
func (d *Driver) NameRule() drivers.NameRule {
	r := drivers.GenericNameRule()
	r.Text = "a libvirt domain name: 1 to 63 letters, digits, '_', '.' and '-', starting with a letter or digit"
	return r
}
