// Package worker is the server side of the bus: one per host, it serves
// the enabled drivers (each behind a manager) as a NATS micro service named
// "substrate", publishes their lifecycle events and metrics to JetStream,
// and, when no NATS server is configured, runs an embedded one.
//
// Subjects, headers, reply format, streaming and the delivery guarantees
// are documented in docs/bus.md; the messages are in package messages.
package worker

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"

	"github.com/subbus/subbus/internal/config"
	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/internal/manager"
	"github.com/subbus/subbus/internal/natsconn"
	"github.com/subbus/subbus/internal/registry"
	"github.com/subbus/subbus/internal/version"
	"github.com/subbus/subbus/messages"
)

// Defaults of the worker section.
const (
	DefaultListen               = "127.0.0.1:4222"
	DefaultRootDataDir          = "/var/lib/subbus/nats"
	DefaultMaxConcurrent        = 64
	DefaultMaxStreams           = 256
	DefaultMaxStreamsPerClient  = 32
	DefaultGracePeriod          = 30 * time.Second
	DefaultIdempotencyTTL       = 10 * time.Minute
	DefaultIdempotencyEntries   = 10000
	DefaultOutboxSize           = 10000
	DefaultMetricsOutboxSize    = 1000
	DefaultEventsMaxAge         = 7 * 24 * time.Hour
	DefaultEventsDuplicates     = 10 * time.Minute
	DefaultMetricsMaxAge        = 24 * time.Hour
	DefaultMetricsMaxPerSubject = 1000
	DefaultMetricsInterval      = 10 * time.Second
	DefaultInventoryResync      = 30 * time.Second
	DefaultLivenessInterval     = 5 * time.Second
	DefaultLeaseTTL             = 30 * time.Second
	DefaultMaxOperations        = 64
	DefaultOperationsTTL        = 24 * time.Hour
)

// Options configure a Worker. Build them with OptionsFromConfig and adjust.
type Options struct {
	// Host is this worker's identity in subjects; it must be a valid
	// subject token. Empty: the short hostname.
	Host string
	// Drivers to serve. Empty: process plus every detected substrate.
	Drivers []string
	// Config is the loaded configuration, passed to driver factories.
	Config *config.Config
	// Managers, when set, are served instead of building drivers from the
	// registry (tests, embedding). They must not be connected yet.
	Managers []*manager.Manager
	// ManagerOptions returns the options of the manager wrapping driver
	// name; nil reads them with manager.OptionsFromConfig.
	ManagerOptions func(name string) manager.Options

	// Connect connects to an external NATS server; the options given must
	// be applied last. nil starts the embedded server (Embedded).
	Connect  func(extra ...nats.Option) (*nats.Conn, error)
	Embedded EmbeddedOptions

	// RestrictPooled limits the pooled endpoints (substrate.<driver>.<op>,
	// answered by any worker serving the driver) to the cluster-wide
	// drivers (drivers.ClusterWide) and the per-host drivers in
	// PooledDrivers; without it every served driver has one. A fleet whose
	// NATS permissions let a worker subscribe only to its own host's
	// subjects and to the pooled subjects of its cluster-wide drivers sets
	// it (worker.pooled_drivers: []).
	RestrictPooled bool
	PooledDrivers  []string

	// ManageStreams creates SUBSTRATE_EVENTS/SUBSTRATE_METRICS when absent;
	// false only checks that they exist.
	ManageStreams        bool
	EventsMaxAge         time.Duration
	EventsDuplicates     time.Duration
	MetricsMaxAge        time.Duration
	MetricsMaxPerSubject int64
	// Replicas of the streams and KV buckets when the worker creates them
	// (worker.stream_replicas); 0 decides at connect time (AutoReplicas: 3
	// on a NATS cluster advertising at least 3 servers, else 1).
	Replicas int

	// MaxConcurrent bounds unary requests handled at once.
	MaxConcurrent int
	// MaxStreams bounds streamed requests (logs follow, exec stream) at
	// once, MaxStreamsPerClient those of one client (admission.go).
	MaxStreams          int
	MaxStreamsPerClient int
	// GracePeriod is how long shutdown waits for in-flight requests.
	GracePeriod time.Duration
	// IdempotencyTTL and IdempotencyEntries bound the idempotency cache.
	IdempotencyTTL     time.Duration
	IdempotencyEntries int
	// OutboxSize bounds events kept while NATS is unreachable (the oldest
	// are dropped and counted beyond it); MetricsOutboxSize likewise for
	// metrics samples.
	OutboxSize        int
	MetricsOutboxSize int
	// OutboxDir holds the durable outboxes (events.log, metrics.log): every
	// event is fsync'd there before the operation replies and replayed
	// after a restart until JetStream acknowledges it. Empty: in memory
	// only (what a kill -9 loses). OptionsFromConfig sets it
	// (worker.outbox_dir, default <dir of nats.data_dir>/outbox).
	OutboxDir string

	EnableMetrics   bool
	MetricsInterval time.Duration

	// InventoryResync is the period of the full resync of this host's
	// records in SUBSTRATE_INVENTORY (worker.inventory_resync); events and
	// requests update single records in between.
	InventoryResync time.Duration
	// LivenessInterval is the period of this host's heartbeat in
	// SUBSTRATE_WORKERS (worker.liveness_interval); readers call the host
	// stale after three missed ones.
	LivenessInterval time.Duration
	// LeaseTTL is how long a lease on an instance of a cluster-wide driver
	// outlives its holder (worker.lease_ttl): the holder renews it every
	// LeaseTTL/3 while its operation runs. It is the bucket's TTL, set by
	// the worker that creates SUBSTRATE_LEASES.
	LeaseTTL time.Duration
	// MaxOperations bounds the long operations running in the background
	// at once (worker.max_operations); a no-wait request beyond it is
	// answered unavailable. They do not take MaxConcurrent slots.
	MaxOperations int
	// OperationsTTL is how long an operation's record stays in
	// SUBSTRATE_OPS after its last change (worker.operations_ttl): the
	// bucket's TTL, set by the worker that creates it.
	OperationsTTL time.Duration

	// HeartbeatInterval and StreamIdle tune streamed replies (defaults
	// messages.HeartbeatInterval, messages.DefaultStreamIdle).
	HeartbeatInterval time.Duration
	StreamIdle        time.Duration

	// PrometheusListen is the host:port /metrics is served on (Prometheus
	// text format); empty serves nothing. Port 0 picks a free one.
	PrometheusListen string

	Version string
	Logger  zerolog.Logger
}

// EmbeddedOptions configure the embedded nats-server.
type EmbeddedOptions struct {
	// Listen is host:port for clients (default 127.0.0.1:4222; port -1
	// picks a free one).
	Listen string
	// DataDir is the JetStream store (default /var/lib/subbus/nats as
	// root, else $XDG_STATE_HOME/subbus/nats or ~/.local/state/subbus/nats).
	DataDir   string
	MaxMemory int64 // JetStream memory limit (default 256 MiB)
	MaxStore  int64 // JetStream file store limit (default 10 GiB)
	// Credential is the nkey seed file clients authenticate with, created
	// on first start, mode 0600 (default natsconn.LocalCredential():
	// /var/lib/subbus/client.nk as root, where subbus looks without flags).
	Credential string
	// CredentialGroup, when set, may read Credential (mode 0640): its
	// members can use subbus without being root.
	CredentialGroup string
}

// workerSection is the worker section of substrate_config.yaml.
type workerSection struct {
	Host                 string          `yaml:"host"`
	Drivers              []string        `yaml:"drivers"`
	PooledDrivers        *[]string       `yaml:"pooled_drivers"`
	ManageStreams        *bool           `yaml:"manage_streams"`
	MaxConcurrent        int             `yaml:"max_concurrent"`
	MaxStreams           int             `yaml:"max_streams"`
	MaxStreamsPerClient  int             `yaml:"max_streams_per_client"`
	GracePeriod          config.Duration `yaml:"grace_period"`
	IdempotencyTTL       config.Duration `yaml:"idempotency_ttl"`
	IdempotencyEntries   int             `yaml:"idempotency_entries"`
	OutboxSize           int             `yaml:"outbox_size"`
	MetricsOutboxSize    int             `yaml:"metrics_outbox_size"`
	OutboxDir            string          `yaml:"outbox_dir"`
	EventsMaxAge         config.Duration `yaml:"events_max_age"`
	EventsDuplicates     config.Duration `yaml:"events_duplicate_window"`
	MetricsMaxAge        config.Duration `yaml:"metrics_max_age"`
	MetricsMaxPerSubject int64           `yaml:"metrics_max_per_subject"`
	Replicas             int             `yaml:"stream_replicas"`
	PrometheusListen     string          `yaml:"prometheus_listen"`
	InventoryResync      config.Duration `yaml:"inventory_resync"`
	LivenessInterval     config.Duration `yaml:"liveness_interval"`
	LeaseTTL             config.Duration `yaml:"lease_ttl"`
	MaxOperations        int             `yaml:"max_operations"`
	OperationsTTL        config.Duration `yaml:"operations_ttl"`
}

// globalSection lists the keys the global section may have: the worker's
// own and the manager's defaults for every driver (read by
// manager.OptionsFromConfig).
type globalSection struct {
	EnableMetrics         bool            `yaml:"enable_metrics"`
	EnableEvents          bool            `yaml:"enable_events"`
	EnableCaching         bool            `yaml:"enable_caching"`
	MetricsInterval       config.Duration `yaml:"metrics_interval"`
	CacheTTL              config.Duration `yaml:"cache_ttl"`
	config.SectionOptions `yaml:",inline"`
}

// natsSection lists the keys of the nats section.
type natsSection struct {
	URL             string `yaml:"url"`
	Listen          string `yaml:"listen"`
	DataDir         string `yaml:"data_dir"`
	MaxMemory       int64  `yaml:"max_memory"`
	MaxStore        int64  `yaml:"max_store"`
	Credential      string `yaml:"credential"`
	CredentialGroup string `yaml:"credential_group"`
	// Connection to an external server, used when no flag or environment
	// variable sets them (read by cmd/worker).
	InboxPrefix string `yaml:"inbox_prefix"`
	Creds       string `yaml:"creds"`
	NKey        string `yaml:"nkey"`
	TLSCert     string `yaml:"tls_cert"`
	TLSKey      string `yaml:"tls_key"`
	TLSCA       string `yaml:"tls_ca"`
}

// OptionsFromConfig reads the worker, nats and global sections. A
// top-level section that is neither one of these nor a registered driver's
// (registry.CheckConfig), unknown keys of these sections, and values of
// the wrong type are errors naming the key.
func OptionsFromConfig(cfg *config.Config) (Options, error) {
	if cfg == nil {
		cfg = &config.Config{}
	}
	if err := registry.CheckConfig(cfg); err != nil {
		return Options{}, err
	}
	var s workerSection
	if err := cfg.Decode("worker", &s); err != nil {
		return Options{}, err
	}
	if err := cfg.Decode("global", &globalSection{}); err != nil {
		return Options{}, err
	}
	if err := cfg.Decode("nats", &natsSection{}); err != nil {
		return Options{}, err
	}
	o := Options{
		Host:                 s.Host,
		Drivers:              s.Drivers,
		Config:               cfg,
		ManageStreams:        s.ManageStreams == nil || *s.ManageStreams,
		RestrictPooled:       s.PooledDrivers != nil,
		MaxConcurrent:        s.MaxConcurrent,
		MaxStreams:           s.MaxStreams,
		MaxStreamsPerClient:  s.MaxStreamsPerClient,
		GracePeriod:          time.Duration(s.GracePeriod),
		IdempotencyTTL:       time.Duration(s.IdempotencyTTL),
		IdempotencyEntries:   s.IdempotencyEntries,
		OutboxSize:           s.OutboxSize,
		MetricsOutboxSize:    s.MetricsOutboxSize,
		EventsMaxAge:         time.Duration(s.EventsMaxAge),
		EventsDuplicates:     time.Duration(s.EventsDuplicates),
		MetricsMaxAge:        time.Duration(s.MetricsMaxAge),
		MetricsMaxPerSubject: s.MetricsMaxPerSubject,
		Replicas:             s.Replicas,
		PrometheusListen:     s.PrometheusListen,
		InventoryResync:      time.Duration(s.InventoryResync),
		LivenessInterval:     time.Duration(s.LivenessInterval),
		LeaseTTL:             time.Duration(s.LeaseTTL),
		MaxOperations:        s.MaxOperations,
		OperationsTTL:        time.Duration(s.OperationsTTL),
		EnableMetrics:        cfg.Bool("global.enable_metrics", true),
		MetricsInterval:      cfg.Duration("global.metrics_interval", DefaultMetricsInterval),
		Embedded: EmbeddedOptions{
			Listen:    cfg.String("nats.listen", ""),
			DataDir:   cfg.String("nats.data_dir", ""),
			MaxMemory: int64(cfg.Int("nats.max_memory", 0)),
			MaxStore:  int64(cfg.Int("nats.max_store", 0)),

			Credential:      cfg.String("nats.credential", ""),
			CredentialGroup: cfg.String("nats.credential_group", ""),
		},
	}
	if s.PooledDrivers != nil {
		o.PooledDrivers = *s.PooledDrivers
	}
	switch s.OutboxDir {
	case "none":
	case "":
		o.OutboxDir = filepath.Join(filepath.Dir(o.withDefaults().Embedded.DataDir), "outbox")
	default:
		o.OutboxDir = s.OutboxDir
	}
	return o, o.withDefaults().validate()
}

// withDefaults fills every zero field with its default.
func (o Options) withDefaults() Options {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	defInt := func(d *int, v int) {
		if *d <= 0 {
			*d = v
		}
	}
	defInt(&o.MaxConcurrent, DefaultMaxConcurrent)
	defInt(&o.MaxStreams, DefaultMaxStreams)
	defInt(&o.MaxStreamsPerClient, DefaultMaxStreamsPerClient)
	def(&o.GracePeriod, DefaultGracePeriod)
	def(&o.IdempotencyTTL, DefaultIdempotencyTTL)
	defInt(&o.IdempotencyEntries, DefaultIdempotencyEntries)
	defInt(&o.OutboxSize, DefaultOutboxSize)
	defInt(&o.MetricsOutboxSize, DefaultMetricsOutboxSize)
	def(&o.EventsMaxAge, DefaultEventsMaxAge)
	def(&o.EventsDuplicates, DefaultEventsDuplicates)
	def(&o.MetricsMaxAge, DefaultMetricsMaxAge)
	if o.MetricsMaxPerSubject <= 0 {
		o.MetricsMaxPerSubject = DefaultMetricsMaxPerSubject
	}
	def(&o.MetricsInterval, DefaultMetricsInterval)
	def(&o.InventoryResync, DefaultInventoryResync)
	def(&o.LivenessInterval, DefaultLivenessInterval)
	def(&o.LeaseTTL, DefaultLeaseTTL)
	defInt(&o.MaxOperations, DefaultMaxOperations)
	def(&o.OperationsTTL, DefaultOperationsTTL)
	def(&o.HeartbeatInterval, messages.HeartbeatInterval)
	def(&o.StreamIdle, messages.DefaultStreamIdle)
	if o.Embedded.Listen == "" {
		o.Embedded.Listen = DefaultListen
	}
	if o.Embedded.DataDir == "" {
		o.Embedded.DataDir = defaultDataDir()
	}
	if o.Embedded.MaxMemory <= 0 {
		o.Embedded.MaxMemory = 256 << 20
	}
	if o.Embedded.MaxStore <= 0 {
		o.Embedded.MaxStore = 10 << 30
	}
	if o.Embedded.Credential == "" {
		o.Embedded.Credential = natsconn.LocalCredential()
	}
	if o.Version == "" {
		o.Version = version.Version
	}
	return o
}

// validate checks values that cannot be defaulted.
func (o Options) validate() error {
	if o.Host != "" && !messages.ValidToken(o.Host) {
		return &config.Error{Key: "worker.host", Msg: fmt.Sprintf("%q is not a subject token (letters, digits, '-', '_')", o.Host)}
	}
	for _, d := range o.Drivers {
		if drivers.ValidDriverName(d) != nil {
			return &config.Error{Key: "worker.drivers", Msg: fmt.Sprintf("%q is not a driver name", d)}
		}
	}
	for _, d := range o.PooledDrivers {
		if drivers.ValidDriverName(d) != nil {
			return &config.Error{Key: "worker.pooled_drivers", Msg: fmt.Sprintf("%q is not a driver name", d)}
		}
	}
	if o.Replicas < 0 || o.Replicas > 5 {
		return &config.Error{Key: "worker.stream_replicas", Msg: fmt.Sprintf("%d: want 1 to 5, or 0 (unset) for 3 on a cluster of at least 3 servers, else 1", o.Replicas)}
	}
	if o.EventsDuplicates > o.EventsMaxAge {
		return &config.Error{Key: "worker.events_duplicate_window", Msg: "must not exceed worker.events_max_age"}
	}
	if o.PrometheusListen != "" {
		if _, port, err := splitListen(o.PrometheusListen); err != nil || port < 0 {
			return &config.Error{Key: "worker.prometheus_listen", Msg: fmt.Sprintf("%q is not host:port", o.PrometheusListen)}
		}
	}
	if _, _, err := splitListen(o.Embedded.Listen); err != nil {
		return &config.Error{Key: "nats.listen", Msg: err.Error()}
	}
	return nil
}

// ResolveHost returns the host identity: h if set, else the short
// hostname. It must be a subject token.
func ResolveHost(h string) (string, error) {
	if h == "" {
		name, err := os.Hostname()
		if err != nil {
			return "", fmt.Errorf("host: %w (set --host)", err)
		}
		h, _, _ = strings.Cut(name, ".")
	}
	if !messages.ValidToken(h) {
		return "", fmt.Errorf("host: %q is not a subject token (letters, digits, '-', '_'); set --host", h)
	}
	return h, nil
}

func splitListen(listen string) (string, int, error) {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return "", 0, fmt.Errorf("%q is not host:port: %w", listen, err)
	}
	p, err := strconv.Atoi(port)
	if err != nil || p < -1 || p > 65535 {
		return "", 0, fmt.Errorf("%q: bad port", listen)
	}
	return host, p, nil
}

func defaultDataDir() string {
	if os.Geteuid() == 0 {
		return DefaultRootDataDir
	}
	if d := os.Getenv("XDG_STATE_HOME"); d != "" {
		return filepath.Join(d, "subbus", "nats")
	}
	if home, err := os.UserHomeDir(); err == nil {
		return filepath.Join(home, ".local", "state", "subbus", "nats")
	}
	return filepath.Join(os.TempDir(), "subbus-nats")
}
