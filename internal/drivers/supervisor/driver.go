// Package supervisor is the driver for programs run by supervisord, through
// its XML-RPC interface (a unix socket or HTTP with basic auth).
//
// Instances are supervisord programs. Programs this driver creates are
// written as one file each into the include directory supervisord reads
// (supervisor.programs_dir) and carry a marker line; programs defined
// elsewhere in supervisord's configuration are listed, started and stopped,
// but delete and clone refuse them with Conflict. Exec and snapshots are
// not supported, nor are resource limits (supervisor has none). The native
// event feed diffs getAllProcessInfo every poll_interval. Metrics are read
// from /proc of the program's process tree, so they assume supervisord
// runs on this host.
package supervisor

import (
	"context"
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/subbus/subbus/internal/config"
	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/internal/procfs"
)

// Name is the driver's name.
const Name = "supervisor"

// Options is the supervisor section of the configuration.
type Options struct {
	// URL of supervisord's XML-RPC interface: unix:///path/to/socket or
	// http://host:port/RPC2 (default unix:///var/run/supervisor.sock).
	URL      string `yaml:"url"`
	Username string `yaml:"username"`
	Password string `yaml:"password"`
	// ProgramsDir is the directory supervisord includes ([include] files =
	// <dir>/*.conf) where the driver writes program files
	// (default /etc/supervisor/conf.d).
	ProgramsDir string `yaml:"programs_dir"`
	// FilePrefix starts the name of every file the driver writes
	// (default "subbus-"): <programs_dir>/<prefix><name>.conf.
	FilePrefix string `yaml:"file_prefix"`
	// LogDir holds the programs' stdout/stderr logs (default /var/log/supervisor).
	LogDir string `yaml:"log_dir"`
	// Program settings written into every created program.
	Autorestart  string `yaml:"autorestart"`    // false, true, unexpected (default unexpected)
	StopSignal   string `yaml:"stop_signal"`    // default TERM
	StopWaitSecs int    `yaml:"stop_wait_secs"` // default 10
	StartSecs    int    `yaml:"start_secs"`     // default 1
	StartRetries int    `yaml:"start_retries"`  // default 3
	// PollInterval is how often the event feed diffs the process table (default 1s).
	PollInterval config.Duration `yaml:"poll_interval"`
	// RequestTimeout bounds one XML-RPC call whose ctx has no deadline (default 30s).
	RequestTimeout config.Duration `yaml:"request_timeout"`
	// The manager's keys of this section (retries, breaker …), read by
	// the manager and ignored here.
	config.SectionOptions `yaml:",inline"`
}

// DefaultOptions returns the defaults documented on Options.
func DefaultOptions() Options {
	return Options{
		URL:            "unix:///var/run/supervisor.sock",
		ProgramsDir:    "/etc/supervisor/conf.d",
		FilePrefix:     "subbus-",
		LogDir:         "/var/log/supervisor",
		Autorestart:    "unexpected",
		StopSignal:     "TERM",
		StopWaitSecs:   10,
		StartSecs:      1,
		StartRetries:   3,
		PollInterval:   config.Duration(time.Second),
		RequestTimeout: config.Duration(30 * time.Second),
	}
}

// OptionsFromConfig decodes the supervisor section over the defaults.
func OptionsFromConfig(cfg *config.Config) (Options, error) {
	o := DefaultOptions()
	if cfg != nil {
		if err := cfg.Decode(Name, &o); err != nil {
			return Options{}, err
		}
	}
	return o, o.validate()
}

var signals = []string{"TERM", "HUP", "INT", "QUIT", "KILL", "USR1", "USR2"}

func (o Options) validate() error {
	bad := func(key, msg string, args ...any) error {
		return &config.Error{Key: Name + "." + key, Msg: fmt.Sprintf(msg, args...)}
	}
	if _, err := newRPC(o.URL, o.Username, o.Password); err != nil {
		return bad("url", "%v", err)
	}
	for key, dir := range map[string]string{"programs_dir": o.ProgramsDir, "log_dir": o.LogDir} {
		if !strings.HasPrefix(dir, "/") {
			return bad(key, "%q is not an absolute path", dir)
		}
		if err := checkPlain(key, dir); err != nil {
			return bad(key, "%v", err)
		}
	}
	if err := drivers.ValidateName("file_prefix", o.FilePrefix+"x"); err != nil {
		return bad("file_prefix", "%q cannot start a file name", o.FilePrefix)
	}
	switch o.Autorestart {
	case "false", "true", "unexpected":
	default:
		return bad("autorestart", "%q: want false, true or unexpected", o.Autorestart)
	}
	o.StopSignal = strings.ToUpper(strings.TrimPrefix(strings.ToUpper(o.StopSignal), "SIG"))
	if !slices.Contains(signals, o.StopSignal) {
		return bad("stop_signal", "%q: want one of %s", o.StopSignal, strings.Join(signals, ", "))
	}
	if o.StopWaitSecs < 0 || o.StartSecs < 0 || o.StartRetries < 0 {
		return bad("stop_wait_secs", "stop_wait_secs, start_secs and start_retries must not be negative")
	}
	if o.PollInterval <= 0 || o.RequestTimeout <= 0 {
		return bad("poll_interval", "poll_interval and request_timeout must be positive")
	}
	return nil
}

// Driver manages supervisord programs. It is safe for concurrent use.
type Driver struct {
	opts Options
	rpc  *rpc

	mu      sync.Mutex
	samples map[string]procfs.TreeSample // previous metrics sample per program
	seen    map[string]processInfo       // the event feed's last view, kept across Watch calls
	// own records, per program, the starts and stops this driver makes,
	// so the feed tells a restart made through subbus from a crash that
	// supervisord respawned.
	own map[string]ownState
}

var (
	_ drivers.Driver      = (*Driver)(nil)
	_ drivers.LogReader   = (*Driver)(nil)
	_ drivers.Cloner      = (*Driver)(nil)
	_ drivers.EventSource = (*Driver)(nil)
)

// New builds a driver from options (see OptionsFromConfig). It does not connect.
func New(o Options) (*Driver, error) {
	o.StopSignal = strings.TrimPrefix(strings.ToUpper(o.StopSignal), "SIG")
	if err := o.validate(); err != nil {
		return nil, err
	}
	r, err := newRPC(o.URL, o.Username, o.Password)
	if err != nil {
		return nil, err
	}
	return &Driver{opts: o, rpc: r, samples: map[string]procfs.TreeSample{}}, nil
}

// FromConfig builds the driver from the configuration's supervisor section.
func FromConfig(cfg *config.Config) (drivers.Driver, error) {
	o, err := OptionsFromConfig(cfg)
	if err != nil {
		return nil, err
	}
	return New(o)
}

// Detect reports whether supervisord answers at the configured URL.
func Detect(ctx context.Context, cfg *config.Config) error {
	d, err := FromConfig(cfg)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Connect(ctx)
}

// Name implements drivers.Driver.
func (d *Driver) Name() string { return Name }

// ctx bounds a call by RequestTimeout when the caller gave no deadline.
func (d *Driver) ctx(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, time.Duration(d.opts.RequestTimeout))
}

// Connect checks that supervisord answers and is running, and records the
// event feed's first view of the process table. It holds no connection
// open, so it is idempotent.
func (d *Driver) Connect(ctx context.Context) error {
	ctx, cancel := d.ctx(ctx)
	defer cancel()
	st, err := d.rpc.getState(ctx)
	if err != nil {
		return err
	}
	if st.Name != "RUNNING" {
		return drivers.Errorf(drivers.Unavailable, "supervisord at %s is %s", d.rpc.target, st.Name)
	}
	d.mu.Lock()
	first := d.seen == nil
	d.mu.Unlock()
	if first {
		// Finish what a crash interrupted (reconcile.go) before anything
		// is listed.
		if err := d.reconcile(ctx); err != nil {
			return err
		}
		// The event feed's first view: changes from here on are events,
		// even those made before the first Watch polls.
		procs, err := d.rpc.getAllProcessInfo(ctx)
		if err != nil {
			return err
		}
		d.mu.Lock()
		if d.seen == nil {
			d.seen = view(procs)
		}
		d.mu.Unlock()
	}
	return nil
}

// Close releases idle connections. Programs keep running.
func (d *Driver) Close() error {
	if t, ok := d.rpc.hc.Transport.(interface{ CloseIdleConnections() }); ok {
		t.CloseIdleConnections()
	}
	return nil
}

// Health reports supervisord's state and versions, counts programs by
// state, and lists programs in FATAL or BACKOFF as issues.
func (d *Driver) Health(ctx context.Context) (drivers.Health, error) {
	ctx, cancel := d.ctx(ctx)
	defer cancel()
	st, err := d.rpc.getState(ctx)
	if err != nil {
		return drivers.Health{}, err
	}
	h := drivers.Health{Healthy: st.Name == "RUNNING", Details: map[string]string{
		"state": st.Name, "url": d.rpc.target, "programs_dir": d.opts.ProgramsDir,
	}}
	if !h.Healthy {
		h.Issues = append(h.Issues, "supervisord is "+st.Name)
	}
	if err := d.rpc.call(ctx, "supervisor.getSupervisorVersion", &h.Version); err != nil {
		return drivers.Health{}, err
	}
	if err := d.rpc.call(ctx, "supervisor.getAPIVersion", &h.APIVersion); err != nil {
		return drivers.Health{}, err
	}
	if fi, err := os.Stat(d.opts.ProgramsDir); err != nil || !fi.IsDir() {
		h.Healthy = false
		h.Issues = append(h.Issues, fmt.Sprintf("programs_dir %s is not a directory on this host: create cannot work", d.opts.ProgramsDir))
	}
	procs, err := d.rpc.getAllProcessInfo(ctx)
	if err != nil {
		return drivers.Health{}, err
	}
	exit, err := d.exitCodes(ctx)
	if err != nil {
		return drivers.Health{}, err
	}
	list := make([]drivers.Instance, 0, len(procs))
	for _, p := range procs {
		i := d.instance(p, exit)
		list = append(list, i)
		switch p.StateName {
		case "FATAL", "BACKOFF":
			issue := fmt.Sprintf("program %s is %s", p.namespec(), p.StateName)
			if p.SpawnErr != "" {
				issue += ": " + p.SpawnErr
			}
			h.Issues = append(h.Issues, issue)
		}
	}
	h.CountStates(list)
	return h, nil
}

// exitCodes maps each program to its expected exit codes, to tell a
// normal EXITED from a failure.
func (d *Driver) exitCodes(ctx context.Context) (map[string][]int, error) {
	cs, err := d.rpc.getAllConfigInfo(ctx)
	if err != nil {
		return nil, err
	}
	m := make(map[string][]int, len(cs))
	for _, c := range cs {
		m[c.namespec()] = c.ExitCodes
	}
	return m, nil
}

// normalize maps supervisor's process state to the portable one.
func normalize(p processInfo, expected []int) drivers.State {
	switch p.StateName {
	case "RUNNING":
		return drivers.StateRunning
	case "STARTING", "BACKOFF":
		return drivers.StateStarting
	case "STOPPING":
		return drivers.StateStopping
	case "STOPPED":
		return drivers.StateStopped
	case "EXITED":
		if expected == nil {
			expected = []int{0}
		}
		if slices.Contains(expected, p.ExitStatus) {
			return drivers.StateStopped
		}
		return drivers.StateError
	case "FATAL":
		return drivers.StateError
	}
	return drivers.StateUnknown
}

// instance builds the portable view of a process (without the file-based
// fields: see managedInfo).
func (d *Driver) instance(p processInfo, exit map[string][]int) drivers.Instance {
	i := drivers.Instance{
		Name:        p.namespec(),
		ID:          p.namespec(),
		State:       normalize(p, exit[p.namespec()]),
		NativeState: p.StateName,
	}
	if p.StateName == "BACKOFF" || p.StateName == "FATAL" {
		i.Metadata = map[string]string{"supervisor.spawnerr": p.SpawnErr}
	}
	if p.StateName == "EXITED" {
		i.Metadata = map[string]string{"supervisor.exitstatus": fmt.Sprint(p.ExitStatus)}
		code := p.ExitStatus
		i.ExitCode = &code
	}
	if p.StateName == "RUNNING" || p.StateName == "STOPPING" {
		i.PID = p.PID
	}
	if p.Start > 0 {
		i.StartedAt = time.Unix(p.Start, 0).UTC()
	}
	return i
}

// withSpec fills the fields that come from this driver's program file.
func (d *Driver) withSpec(i drivers.Instance) drivers.Instance {
	sp, ok, err := d.readSpec(i.Name)
	if err != nil || !ok {
		return i
	}
	i.Managed = true
	i.Created = sp.Created
	if a := argv(sp.Template); len(a) > 0 {
		i.Image = a[0]
	}
	if sp.Template.BaseImage != "" {
		i.Image = sp.Template.BaseImage
	}
	t := sp.Template
	i.Command, i.WorkDir, i.User = slices.Clone(argv(t)), t.WorkDir, t.User
	if len(t.Environment) > 0 {
		i.Environment = maps.Clone(t.Environment)
	}
	if len(sp.Template.Metadata) > 0 || len(i.Metadata) > 0 {
		md := map[string]string{}
		for k, v := range sp.Template.Metadata {
			md[k] = v
		}
		for k, v := range i.Metadata {
			md[k] = v
		}
		i.Metadata = md
	}
	return i
}

// List returns every program supervisord runs, managed or not. Processes
// of multi-process groups are named group:process.
func (d *Driver) List(ctx context.Context) ([]drivers.Instance, error) {
	ctx, cancel := d.ctx(ctx)
	defer cancel()
	procs, err := d.rpc.getAllProcessInfo(ctx)
	if err != nil {
		return nil, err
	}
	exit, err := d.exitCodes(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]drivers.Instance, 0, len(procs))
	for _, p := range procs {
		out = append(out, d.withSpec(d.instance(p, exit)))
	}
	return out, nil
}

// Get returns one program, or NotFound.
func (d *Driver) Get(ctx context.Context, name string) (drivers.Instance, error) {
	ctx, cancel := d.ctx(ctx)
	defer cancel()
	p, err := d.rpc.getProcessInfo(ctx, name)
	if err != nil {
		return drivers.Instance{}, err
	}
	exit, err := d.exitCodes(ctx)
	if err != nil {
		return drivers.Instance{}, err
	}
	return d.withSpec(d.instance(p, exit)), nil
}

// NameRule: the generic rule (drivers.ValidateName), stated for this
// substrate.
func (d *Driver) NameRule() drivers.NameRule {
	r := drivers.GenericNameRule()
	r.Text = "a supervisor program name: 1 to 63 letters, digits, '_', '.' and '-', starting with a letter or digit (no ':')"
	return r
}
