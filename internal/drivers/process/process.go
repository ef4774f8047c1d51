// Package process is the native process driver, the worker's zero-setup
// default: an instance is a local process (argv, environment, working
// directory) that the worker supervises, with nothing to install.
//
// Definitions and state persist under a state directory, one JSON file per
// instance written atomically. Processes run in their own session, write
// straight to log files in the state directory, and survive a worker
// restart: on Connect the driver re-adopts every recorded process whose
// pid still has the recorded start time, so a reused pid is never taken for
// the instance. Close never kills instances. See docs/process.md.
package process

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/subbus/subbus/internal/config"
	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/internal/procfs"
)

// Name is the driver's name.
const Name = "process"

// Options configure the driver; they are the `process` config section.
type Options struct {
	// StateDir holds definitions, state and logs (default
	// /var/lib/subbus/process as root, else $XDG_STATE_HOME/subbus/process).
	StateDir string `yaml:"state_dir"`
	// LogMaxBytes rotates an output file larger than this (default 10 MiB).
	LogMaxBytes int64 `yaml:"log_max_bytes"`
	// LogKeep is how many rotated files are kept per stream (default 3).
	LogKeep int `yaml:"log_keep"`
	// LogCheckInterval is ignored: rotation is enforced while writing. It
	// is still accepted so that existing configurations parse.
	LogCheckInterval config.Duration `yaml:"log_check_interval"`
	// StopTimeout is the graceful stop timeout when none is given (default 10s).
	StopTimeout config.Duration `yaml:"stop_timeout"`
	// PollInterval is how often re-adopted processes (not children of this
	// worker) are checked for exit (default 250ms).
	PollInterval config.Duration `yaml:"poll_interval"`
	// Cgroups: "auto" (default) uses cgroups for limits where the cgroup
	// file system is writable; "off" never does (limits are unsupported).
	Cgroups string `yaml:"cgroups"`
	// CgroupParent is the cgroup under which instance cgroups are made
	// (default "subbus-process").
	CgroupParent string `yaml:"cgroup_parent"`
	// CgroupRoot is where cgroup file systems are mounted (default /sys/fs/cgroup).
	CgroupRoot string `yaml:"cgroup_root"`
	// DefaultUser is the user (name or uid) instances and exec commands
	// run as when the request names none. Default: "nobody" when the
	// worker runs as root (uid 65534 where no such user exists). A worker that is not root ignores it: it can
	// only run processes as itself.
	DefaultUser string `yaml:"default_user"`
	// StartSettle is how long Start watches a process it started before
	// answering (default 500ms; negative: not at all). A process that
	// exits with a non-zero status or is killed within it makes Start fail
	// with code exited, giving the exit status and the last lines of its
	// output; one that exits 0 (a one-shot command that is done) is a
	// successful start.
	StartSettle config.Duration `yaml:"start_settle"`
	// AllowRoot lets instances and exec commands run as root (uid 0),
	// whether the request names root or DefaultUser is root. Default
	// false: such requests are permission_denied. See docs/security.md.
	AllowRoot bool `yaml:"allow_root"`
}

// DefaultStartSettle is the default of Options.StartSettle.
const DefaultStartSettle = 500 * time.Millisecond

// DefaultStateDir is the default state directory for this user.
func DefaultStateDir() string {
	if os.Geteuid() == 0 {
		return "/var/lib/subbus/process"
	}
	base := os.Getenv("XDG_STATE_HOME")
	if base == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			home = os.TempDir()
		}
		base = filepath.Join(home, ".local", "state")
	}
	return filepath.Join(base, "subbus", "process")
}

func (o *Options) setDefaults() {
	if o.StateDir == "" {
		o.StateDir = DefaultStateDir()
	}
	if o.LogMaxBytes <= 0 {
		o.LogMaxBytes = 10 << 20
	}
	if o.LogKeep <= 0 {
		o.LogKeep = 3
	}
	if o.LogCheckInterval <= 0 {
		o.LogCheckInterval = config.Duration(time.Second)
	}
	if o.StopTimeout <= 0 {
		o.StopTimeout = config.Duration(10 * time.Second)
	}
	if o.PollInterval <= 0 {
		o.PollInterval = config.Duration(250 * time.Millisecond)
	}
	if o.StartSettle == 0 {
		o.StartSettle = config.Duration(DefaultStartSettle)
	}
	if o.Cgroups == "" {
		o.Cgroups = "auto"
	}
	if o.CgroupParent == "" {
		o.CgroupParent = "subbus-process"
	}
	if o.CgroupRoot == "" {
		o.CgroupRoot = "/sys/fs/cgroup"
	}
	if o.DefaultUser == "" && os.Geteuid() == 0 {
		o.DefaultUser = "nobody"
		if _, err := user.Lookup("nobody"); err != nil {
			o.DefaultUser = "65534" // no passwd entry (e.g. a scratch image): nobody's usual uid
		}
	}
}

// FromConfig builds the driver from the `process` config section.
func FromConfig(cfg *config.Config) (drivers.Driver, error) {
	var o Options
	if err := cfg.Decode("process", &o); err != nil {
		return nil, err
	}
	if o.Cgroups != "" && o.Cgroups != "auto" && o.Cgroups != "off" {
		return nil, &config.Error{Key: "process.cgroups", Msg: fmt.Sprintf("%q: must be auto or off", o.Cgroups)}
	}
	if o.LogMaxBytes < 0 {
		return nil, &config.Error{Key: "process.log_max_bytes", Msg: "must not be negative"}
	}
	return New(o), nil
}

// Detect reports whether the driver can run here: always, on Linux.
func Detect(ctx context.Context, cfg *config.Config) error { return nil }

// Driver is the native process driver. It is safe for concurrent use.
type Driver struct {
	opts Options

	mu        sync.Mutex
	rotMu     sync.Mutex // serializes log rotation with log reading
	connected bool
	lock      *os.File // flock on <state_dir>/lock while connected
	insts     map[string]*inst
	issues    []string        // state files that could not be read
	backlog   []drivers.Event // changes found while connecting
	cgOnce    sync.Once
	cg        *cgroups        // nil when limits are unsupported; set once by cgroupsOnce
	bg        context.Context // background work, ended by Close
	bgCancel  context.CancelFunc
	bgWG      sync.WaitGroup
	boot      string
	hostPrev  *procfs.HostCPU // host CPU reading of the previous Health
	owner     string          // this state directory's marker id (loadOwner)
	reaped    int             // unowned marked processes killed by reconcile

	// Output pumps (logs.go): the read ends they hold, so Close can end them.
	pumpMu sync.Mutex
	pumps  map[*os.File]struct{}
	pumpWG sync.WaitGroup

	events watchers
}

// inst is one instance in memory. rec is guarded by Driver.mu.
type inst struct {
	rec *record
	// done is closed when the current process has exited (nil when not running).
	done chan struct{}
	// stopping is set while Stop/Delete brings the process down, so its
	// exit counts as stopped whatever the exit status.
	stopping bool
	// prev is the previous metrics sample, for rates.
	prev *procfs.TreeSample
	// logs are the writers of stdout and stderr (created at the first start).
	logs [2]*logWriter
	// pumps is done when the pumps of the current process's output have
	// read everything (EOF); set by startPumps.
	pumps *sync.WaitGroup
}

// closeLogs ends the instance's log writers (deleted or driver closed).
func (in *inst) closeLogs() {
	for _, w := range in.logs {
		if w != nil {
			w.close()
		}
	}
}

// New returns an unconnected driver.
func New(o Options) *Driver {
	o.setDefaults()
	return &Driver{opts: o}
}

var (
	_ drivers.Driver               = (*Driver)(nil)
	_ drivers.Execer               = (*Driver)(nil)
	_ drivers.LogReader            = (*Driver)(nil)
	_ drivers.Limiter              = (*Driver)(nil)
	_ drivers.Cloner               = (*Driver)(nil)
	_ drivers.EventSource          = (*Driver)(nil)
	_ drivers.CapabilitiesReporter = (*Driver)(nil)
)

// Name returns "process".
func (d *Driver) Name() string { return Name }

// Options returns the options in force (defaults applied).
func (d *Driver) Options() Options { return d.opts }

// Capabilities narrows Limits to machines whose cgroup file system is
// writable (known after Connect).
func (d *Driver) Capabilities() drivers.Capabilities {
	return drivers.Capabilities{Exec: true, Logs: true, Limits: d.cgroupsOnce() != nil, Clone: true, Events: true,
		LogTimes: true, LogOrder: true}
}

// cgroupsOnce probes cgroup support once (creating the parent cgroup).
func (d *Driver) cgroupsOnce() *cgroups {
	d.cgOnce.Do(func() { d.cg = probeCgroups(d.opts) })
	return d.cg
}

// Connect loads every state file and re-adopts running processes. It is
// idempotent: a connected driver returns nil at once.
func (d *Driver) Connect(ctx context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.connected {
		return nil
	}
	if err := os.MkdirAll(d.instancesDir(), 0o700); err != nil {
		return fmt.Errorf("process: state directory %s: %w", d.opts.StateDir, err)
	}
	if err := d.lockStateDir(); err != nil {
		return err
	}
	d.cleanTemp()
	recs, bad, err := d.readRecords()
	if err != nil {
		d.unlockStateDir()
		return fmt.Errorf("process: reading state: %w", err)
	}
	d.issues = bad
	d.boot = procfs.BootID()
	d.cgroupsOnce()
	if err := d.loadOwner(); err != nil {
		d.unlockStateDir()
		return fmt.Errorf("process: state directory owner id: %w", err)
	}
	d.bg, d.bgCancel = context.WithCancel(context.Background())
	d.insts = map[string]*inst{}
	d.pumps = map[*os.File]struct{}{}
	d.backlog = nil
	d.reaped = 0
	for name, r := range recs {
		d.insts[name] = &inst{rec: r}
	}
	d.reconcile()
	d.connected = true
	return nil
}

// Close stops background work. Instances keep running; a later Connect
// (in this or another worker) re-adopts them.
func (d *Driver) Close() error {
	d.mu.Lock()
	if !d.connected {
		d.mu.Unlock()
		return nil
	}
	d.connected = false
	d.bgCancel()
	d.mu.Unlock()
	d.events.closeAll()
	d.bgWG.Wait()
	// End the output pumps: the instances keep their own read ends, so
	// their output waits in the pipes for the next Connect.
	d.pumpMu.Lock()
	for r := range d.pumps {
		_ = r.Close()
	}
	d.pumpMu.Unlock()
	d.pumpWG.Wait()
	d.mu.Lock()
	for _, in := range d.insts {
		in.closeLogs()
	}
	d.unlockStateDir()
	d.mu.Unlock()
	return nil
}

// lockStateDir takes an exclusive lock on <state_dir>/lock, so two
// workers (or two drivers) never manage the same instances at once. The
// holder's pid is written in the file. d.mu must be held.
func (d *Driver) lockStateDir() error {
	f, err := os.OpenFile(filepath.Join(d.opts.StateDir, "lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("process: state directory lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		holder, _ := os.ReadFile(f.Name())
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return drivers.Errorf(drivers.Unavailable, "process: state directory %s is in use by another worker (pid %s)",
				d.opts.StateDir, strings.TrimSpace(string(holder)))
		}
		return fmt.Errorf("process: state directory lock: %w", err)
	}
	_ = f.Truncate(0)
	_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	d.lock = f
	return nil
}

// unlockStateDir releases the lock; d.mu must be held.
func (d *Driver) unlockStateDir() {
	if d.lock != nil {
		_ = d.lock.Close() // closing the descriptor releases the flock
		d.lock = nil
	}
}

// Health reports the state directory, cgroup support, instance counts and
// the host's CPU and memory usage (Usage).
func (d *Driver) Health(ctx context.Context) (drivers.Health, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.connected {
		return drivers.Health{}, drivers.Errorf(drivers.Unavailable, "process: not connected")
	}
	h := drivers.Health{Healthy: true, Version: "native", Issues: append([]string(nil), d.issues...),
		Details: map[string]string{"state_dir": d.opts.StateDir, "cgroups": "unsupported"}}
	var dropped int64
	for _, in := range d.insts {
		for _, w := range in.logs {
			if w != nil {
				dropped += w.droppedBytes()
			}
		}
	}
	h.Details["log_bytes_dropped"] = strconv.FormatInt(dropped, 10)
	h.Details["orphans_killed"] = strconv.Itoa(d.reaped)
	if d.cg != nil {
		h.Details["cgroups"] = d.cg.describe()
	}
	probe := filepath.Join(d.instancesDir(), ".health")
	if err := writeFileAtomic(probe, []byte("ok\n")); err != nil {
		h.Healthy = false
		h.Issues = append(h.Issues, "state directory not writable: "+err.Error())
	} else {
		_ = os.Remove(probe)
	}
	var list []drivers.Instance
	for _, in := range d.insts {
		list = append(list, d.instanceOf(in))
	}
	h.CountStates(list)
	h.Usage = d.hostUsage(&h)
	return h, nil
}

// hostUsage samples the host's CPU (% since the previous Health call,
// since boot on the first) and memory in use; d.mu must be held. A /proc
// read error leaves Usage nil and is added to h.Issues.
func (d *Driver) hostUsage(h *drivers.Health) *drivers.ResourceUsage {
	cpu, err := procfs.ReadHostCPU()
	if err != nil {
		h.Issues = append(h.Issues, "host usage: "+err.Error())
		return nil
	}
	mem, err := procfs.HostMemoryUsed()
	if err != nil {
		h.Issues = append(h.Issues, "host usage: "+err.Error())
		return nil
	}
	u := procfs.HostUsage(cpu, d.hostPrev, mem)
	d.hostPrev = &cpu
	return &u
}

// lookup returns the instance called name; d.mu must be held.
func (d *Driver) lookup(name string) (*inst, error) {
	if !d.connected {
		return nil, drivers.Errorf(drivers.Unavailable, "process: not connected")
	}
	if err := drivers.ValidateName("name", name); err != nil {
		return nil, err
	}
	in, ok := d.insts[name]
	if !ok {
		return nil, drivers.Errorf(drivers.NotFound, "instance %q not found", name)
	}
	return in, nil
}

// instanceOf is the portable view of in; d.mu must be held.
func (d *Driver) instanceOf(in *inst) drivers.Instance {
	r := in.rec
	t := r.Template
	i := drivers.Instance{
		Name: r.Name, ID: r.ID, State: r.State, NativeState: r.Native,
		Image: imageOf(t), Created: r.Created, Metadata: cloneMap(t.Metadata),
		Limits: r.Limits, Managed: true,
		Command: slices.Clone(argvOf(t)), Environment: cloneMap(t.Environment), Volumes: slices.Clone(t.Volumes),
		WorkDir: t.WorkDir, User: t.User, StartedAt: r.StartedAt,
	}
	if r.State == drivers.StateRunning {
		i.NativeState, i.PID = "running", r.Pid
	}
	if r.ExitCode != nil {
		c := *r.ExitCode
		i.ExitCode = &c
	}
	return i
}

// List returns every instance, sorted by name.
func (d *Driver) List(ctx context.Context) ([]drivers.Instance, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.connected {
		return nil, drivers.Errorf(drivers.Unavailable, "process: not connected")
	}
	out := make([]drivers.Instance, 0, len(d.insts))
	for _, in := range d.insts {
		out = append(out, d.instanceOf(in))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Get returns one instance.
func (d *Driver) Get(ctx context.Context, name string) (drivers.Instance, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	in, err := d.lookup(name)
	if err != nil {
		return drivers.Instance{}, err
	}
	return d.instanceOf(in), nil
}

// argvOf is the command line of a template: Command, or BaseImage alone.
func argvOf(t drivers.InstanceTemplate) []string {
	if len(t.Command) > 0 {
		return t.Command
	}
	if t.BaseImage != "" {
		return []string{t.BaseImage}
	}
	return nil
}

// imageOf is what the instance reports as its image: the executable.
func imageOf(t drivers.InstanceTemplate) string {
	if t.BaseImage != "" {
		return t.BaseImage
	}
	if len(t.Command) > 0 {
		return t.Command[0]
	}
	return ""
}

// checkTemplate rejects what this driver cannot do and resolves the
// executable (a missing one is NotFound naming it).
func (d *Driver) checkTemplate(t drivers.InstanceTemplate) error {
	if err := drivers.ValidateName("name", t.Name); err != nil {
		return err
	}
	argv := argvOf(t)
	if len(argv) == 0 || argv[0] == "" {
		return drivers.Errorf(drivers.InvalidArgument, "command: the process driver needs a command or base_image (the executable)")
	}
	if len(t.Networks) > 0 {
		return drivers.Unsupportedf("networks: the process driver has no networks")
	}
	if len(t.Volumes) > 0 {
		return drivers.Unsupportedf("volumes: the process driver has no volumes")
	}
	if err := d.checkLimits(t.Resources); err != nil {
		return err
	}
	if t.WorkDir != "" {
		if !filepath.IsAbs(t.WorkDir) {
			return drivers.Errorf(drivers.InvalidArgument, "workdir: %q must be an absolute path", t.WorkDir)
		}
		st, err := os.Stat(t.WorkDir)
		if err != nil || !st.IsDir() {
			return drivers.Errorf(drivers.NotFound, "workdir: %q is not a directory", t.WorkDir)
		}
	}
	if _, err := d.runAs(t.User); err != nil {
		return err
	}
	if t.BaseImage != "" && len(t.Command) > 0 {
		image, err := resolveExecutable(t.BaseImage, envOf(t, nil), t.WorkDir)
		if err != nil {
			return err
		}
		// command[0] not found next to a base_image that is: the words
		// were meant as arguments to base_image.
		path, _ := resolveExecutable(t.Command[0], envOf(t, nil), t.WorkDir)
		return drivers.SameExecutable(t, image, path)
	}
	_, err := resolveExecutable(argv[0], envOf(t, nil), t.WorkDir)
	return err
}

// resolveExecutable finds argv0 the way the process will: through PATH of
// the instance environment when it has no slash, relative to dir otherwise.
func resolveExecutable(argv0 string, env []string, dir string) (string, error) {
	path := argv0
	if !filepath.IsAbs(argv0) && filepathHasSlash(argv0) {
		if dir == "" {
			dir = "/"
		}
		path = filepath.Join(dir, argv0)
	}
	if !filepathHasSlash(argv0) {
		found := ""
		for _, p := range filepath.SplitList(envValue(env, "PATH")) {
			if p == "" {
				continue
			}
			c := filepath.Join(p, argv0)
			if st, err := os.Stat(c); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
				found = c
				break
			}
		}
		if found == "" {
			return "", drivers.Errorf(drivers.NotFound, "executable %q not found in PATH", argv0)
		}
		path = found
	}
	st, err := os.Stat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return "", drivers.Errorf(drivers.NotFound, "executable %q not found", argv0)
	case err != nil:
		return "", fmt.Errorf("executable %s: %w", argv0, err)
	case st.IsDir() || st.Mode()&0o111 == 0:
		return "", drivers.Errorf(drivers.PermissionDenied, "executable %q is not executable", argv0)
	}
	return path, nil
}

func filepathHasSlash(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] == '/' {
			return true
		}
	}
	return false
}

// Create records a new, stopped instance.
func (d *Driver) Create(ctx context.Context, t drivers.InstanceTemplate) (drivers.Instance, error) {
	if err := d.checkTemplate(t); err != nil {
		return drivers.Instance{}, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.connected {
		return drivers.Instance{}, drivers.Errorf(drivers.Unavailable, "process: not connected")
	}
	if _, ok := d.insts[t.Name]; ok {
		return drivers.Instance{}, drivers.Errorf(drivers.AlreadyExists, "instance %q already exists", t.Name)
	}
	r := &record{
		Version: recordVersion, Name: t.Name, ID: newID(), Template: copyTemplate(t),
		Limits: t.Resources, Created: time.Now().UTC(), State: drivers.StateStopped, Native: "created",
	}
	return d.add(r)
}

// add persists a new record and registers it; d.mu must be held. On
// failure nothing is left behind.
func (d *Driver) add(r *record) (drivers.Instance, error) {
	if _, err := os.Stat(d.instanceDir(r.Name)); err == nil {
		// Left over by an interrupted delete; it has no state file (else it
		// would be loaded), so it is not an instance.
		if err := os.RemoveAll(d.instanceDir(r.Name)); err != nil {
			return drivers.Instance{}, fmt.Errorf("create %s: %w", r.Name, err)
		}
	}
	if err := d.writeRecord(r); err != nil {
		_ = os.RemoveAll(d.instanceDir(r.Name))
		return drivers.Instance{}, fmt.Errorf("create %s: %w", r.Name, err)
	}
	fault("create.recorded")
	in := &inst{rec: r}
	d.insts[r.Name] = in
	return d.instanceOf(in), nil
}

// Clone records a copy of source's definition (and limits) under target,
// stopped. Logs are not copied.
func (d *Driver) Clone(ctx context.Context, source, target string) (drivers.Instance, error) {
	if err := drivers.ValidateName("target", target); err != nil {
		return drivers.Instance{}, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	src, err := d.lookup(source)
	if err != nil {
		return drivers.Instance{}, err
	}
	if _, ok := d.insts[target]; ok {
		return drivers.Instance{}, drivers.Errorf(drivers.AlreadyExists, "instance %q already exists", target)
	}
	t := copyTemplate(src.rec.Template)
	t.Name = target
	r := &record{
		Version: recordVersion, Name: target, ID: newID(), Template: t, Limits: src.rec.Limits,
		Created: time.Now().UTC(), State: drivers.StateStopped, Native: "cloned from " + source,
	}
	return d.add(r)
}

// Delete removes an instance: its state, logs and cgroup. A running one is
// Conflict unless forced (then its process group is killed first).
func (d *Driver) Delete(ctx context.Context, name string, opts drivers.DeleteOptions) (bool, error) {
	d.mu.Lock()
	in, err := d.lookup(name)
	if err != nil {
		d.mu.Unlock()
		if opts.Force && errors.Is(err, drivers.ErrNotFound) {
			return false, nil
		}
		return false, err
	}
	running := in.rec.State == drivers.StateRunning
	d.mu.Unlock()
	if running {
		if !opts.Force {
			return false, drivers.Errorf(drivers.Conflict, "instance %q is running; stop it first or force", name)
		}
		if _, err := d.Stop(ctx, name, drivers.StopOptions{Force: true}); err != nil {
			return false, err
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	in, ok := d.insts[name]
	if !ok {
		return false, drivers.Errorf(drivers.NotFound, "instance %q not found", name)
	}
	if in.rec.State == drivers.StateRunning {
		return false, drivers.Errorf(drivers.Conflict, "instance %q was started again while being deleted", name)
	}
	// Remove the state file first: without it the directory is no
	// instance (and Connect removes what is left of it).
	if err := os.Remove(d.recordPath(name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return false, fmt.Errorf("delete %s: %w", name, err)
	}
	syncDir(d.instanceDir(name))
	fault("delete.unrecorded")
	delete(d.insts, name)
	in.closeLogs()
	_ = os.RemoveAll(d.instanceDir(name))
	if d.cg != nil {
		d.cg.remove(in.rec.ID)
	}
	return true, nil
}

// ErrorCode classifies the driver's native errors (os, exec and syscall
// errors): the one place they map to codes. Errors the driver built with
// drivers.Errorf carry their code and are not passed here
// (drivers.Classify reads them first).
func (d *Driver) ErrorCode(err error) drivers.Code { return classifyOS(err) }

// classifyOS maps os/syscall errors to codes.
func classifyOS(err error) drivers.Code {
	var errno syscall.Errno
	switch {
	case err == nil:
		return 0
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return drivers.Timeout
	case errors.Is(err, exec.ErrNotFound), errors.Is(err, fs.ErrNotExist):
		return drivers.NotFound
	case errors.Is(err, fs.ErrPermission):
		return drivers.PermissionDenied
	case errors.Is(err, fs.ErrExist):
		return drivers.AlreadyExists
	case errors.As(err, &errno):
		switch errno {
		case syscall.ESRCH:
			return drivers.NotFound
		case syscall.EBUSY, syscall.ETXTBSY:
			return drivers.Conflict
		case syscall.EINVAL, syscall.E2BIG, syscall.ENAMETOOLONG, syscall.ENOEXEC:
			return drivers.InvalidArgument
		case syscall.ENOSPC, syscall.EMFILE, syscall.ENFILE, syscall.EAGAIN, syscall.ENOMEM, syscall.EROFS:
			return drivers.Unavailable
		}
	}
	return drivers.Internal
}

func newID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func cloneMap(m map[string]string) map[string]string {
	if m == nil {
		return nil
	}
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

func copyTemplate(t drivers.InstanceTemplate) drivers.InstanceTemplate {
	t.Command = append([]string(nil), t.Command...)
	t.Environment = cloneMap(t.Environment)
	t.Metadata = cloneMap(t.Metadata)
	return t
}

// NameRule: the generic rule (drivers.ValidateName), stated for this
// substrate.
func (d *Driver) NameRule() drivers.NameRule {
	r := drivers.GenericNameRule()
	r.Text = "an instance name is also a directory name: 1 to 63 letters, digits, '_', '.' and '-', starting with a letter or digit"
	return r
}
