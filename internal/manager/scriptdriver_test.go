package manager

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/subbus/subbus/internal/drivers"
)

// step scripts one call of an operation.
type step struct {
	code      drivers.Code  // fail with this code (0: behave normally)
	delay     time.Duration // wait this long first (giving up when ctx ends, unless ignoreCtx)
	ignoreCtx bool          // a misbehaving driver that does not watch ctx
	block     chan struct{} // wait until closed (or ctx ends)
	panic     bool
	raw       error // return this raw (unclassified) error
}

// scriptDriver is an in-memory driver whose calls can be scripted per
// operation: delays, failure codes, blocking, a substrate that is down, a
// flapping one. Without a script it behaves like a correct driver.
type scriptDriver struct {
	name string

	mu        sync.Mutex
	script    map[string][]step
	calls     map[string]int
	down      bool // every call fails with Unavailable
	flap      int  // when > 0: every flap-th call of any op fails with Unavailable
	total     int
	instances map[string]*drivers.Instance
	lastStop  drivers.StopOptions
	lastLogs  drivers.LogOptions
}

func newScriptDriver(name string) *scriptDriver {
	return &scriptDriver{name: name, script: map[string][]step{}, calls: map[string]int{}, instances: map[string]*drivers.Instance{}}
}

// then queues outcomes for op's next calls.
func (d *scriptDriver) then(op string, s ...step) *scriptDriver {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.script[op] = append(d.script[op], s...)
	return d
}

func (d *scriptDriver) setDown(v bool) {
	d.mu.Lock()
	d.down = v
	d.mu.Unlock()
}

func (d *scriptDriver) count(op string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.calls[op]
}

func (d *scriptDriver) totalCalls() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.total
}

// add puts an instance in place without going through Create.
func (d *scriptDriver) add(name string, st drivers.State) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.instances[name] = &drivers.Instance{Name: name, ID: "id-" + name, State: st, Image: "img"}
}

var errRawDown = errors.New("dial unix /fake.sock: connection refused")

// enter records a call of op and plays its scripted step.
func (d *scriptDriver) enter(ctx context.Context, op string) error {
	d.mu.Lock()
	d.calls[op]++
	d.total++
	var s step
	if q := d.script[op]; len(q) > 0 {
		s, d.script[op] = q[0], q[1:]
	}
	down := d.down || (d.flap > 0 && d.total%d.flap == 0)
	d.mu.Unlock()
	if s.panic {
		panic("scripted panic in " + op)
	}
	if s.delay > 0 {
		if s.ignoreCtx {
			time.Sleep(s.delay)
		} else {
			t := time.NewTimer(s.delay)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return ctx.Err()
			}
		}
	}
	if s.block != nil {
		select {
		case <-s.block:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	switch {
	case s.raw != nil:
		return s.raw
	case s.code != 0:
		return drivers.Errorf(s.code, "scripted %s on %s", s.code, op)
	case down:
		return errRawDown
	}
	return nil
}

func (d *scriptDriver) Name() string { return d.name }

func (d *scriptDriver) Connect(ctx context.Context) error { return d.enter(ctx, "connect") }

func (d *scriptDriver) Close() error { return nil }

func (d *scriptDriver) Health(ctx context.Context) (drivers.Health, error) {
	if err := d.enter(ctx, "health"); err != nil {
		return drivers.Health{}, err
	}
	return drivers.Health{Healthy: true, Version: "1.0"}, nil
}

func (d *scriptDriver) List(ctx context.Context) ([]drivers.Instance, error) {
	if err := d.enter(ctx, "list"); err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []drivers.Instance
	for _, i := range d.instances {
		out = append(out, *i)
	}
	return out, nil
}

func (d *scriptDriver) lookup(name string) (*drivers.Instance, error) {
	i, ok := d.instances[name]
	if !ok {
		return nil, drivers.Errorf(drivers.NotFound, "instance %s not found", name)
	}
	return i, nil
}

func (d *scriptDriver) Get(ctx context.Context, name string) (drivers.Instance, error) {
	if err := d.enter(ctx, "get"); err != nil {
		return drivers.Instance{}, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	i, err := d.lookup(name)
	if err != nil {
		return drivers.Instance{}, err
	}
	return *i, nil
}

func (d *scriptDriver) Create(ctx context.Context, t drivers.InstanceTemplate) (drivers.Instance, error) {
	if err := d.enter(ctx, "create"); err != nil {
		return drivers.Instance{}, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.instances[t.Name]; ok {
		return drivers.Instance{}, drivers.Errorf(drivers.AlreadyExists, "instance %s exists", t.Name)
	}
	i := &drivers.Instance{Name: t.Name, ID: "id-" + t.Name, State: drivers.StateStopped, Image: t.BaseImage, Metadata: t.Metadata, Managed: true}
	d.instances[t.Name] = i
	return *i, nil
}

func (d *scriptDriver) setState(ctx context.Context, op, name string, want drivers.State) (bool, error) {
	if err := d.enter(ctx, op); err != nil {
		return false, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	i, err := d.lookup(name)
	if err != nil {
		return false, err
	}
	if i.State == want {
		return false, nil
	}
	i.State = want
	return true, nil
}

func (d *scriptDriver) Start(ctx context.Context, name string) (bool, error) {
	return d.setState(ctx, "start", name, drivers.StateRunning)
}

func (d *scriptDriver) Stop(ctx context.Context, name string, opts drivers.StopOptions) (bool, error) {
	d.mu.Lock()
	d.lastStop = opts
	d.mu.Unlock()
	return d.setState(ctx, "stop", name, drivers.StateStopped)
}

func (d *scriptDriver) Delete(ctx context.Context, name string, opts drivers.DeleteOptions) (bool, error) {
	if err := d.enter(ctx, "delete"); err != nil {
		return false, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	i, err := d.lookup(name)
	if err != nil {
		if opts.Force {
			return false, nil
		}
		return false, err
	}
	if i.State == drivers.StateRunning && !opts.Force {
		return false, drivers.Errorf(drivers.Conflict, "instance %s is running", name)
	}
	delete(d.instances, name)
	return true, nil
}

func (d *scriptDriver) Metrics(ctx context.Context, name string) (drivers.ResourceUsage, error) {
	if err := d.enter(ctx, "metrics"); err != nil {
		return drivers.ResourceUsage{}, err
	}
	return drivers.ResourceUsage{CPUPercent: 1, Measured: drivers.MeasureCPU}, nil
}

// ErrorCode classifies the driver's raw errors.
func (d *scriptDriver) ErrorCode(err error) drivers.Code {
	if errors.Is(err, errRawDown) {
		return drivers.Unavailable
	}
	return drivers.Internal
}

// fullDriver adds every optional capability.
type fullDriver struct {
	*scriptDriver
	events    chan drivers.Event
	watchErrs chan error // each Watch call first takes one: non-nil ends it with that error
	attached  sync.Map   // "instance/network" -> true
}

func newFullDriver(name string) *fullDriver {
	return &fullDriver{scriptDriver: newScriptDriver(name), events: make(chan drivers.Event, 16), watchErrs: make(chan error, 16)}
}

func (d *fullDriver) Exec(ctx context.Context, name string, req drivers.ExecRequest, stdout, stderr drivers.Writer) (int, error) {
	if err := d.enter(ctx, "exec"); err != nil {
		return 0, err
	}
	if _, err := fmt.Fprintf(stdout, "out:%s", req.Command[0]); err != nil {
		return 0, fmt.Errorf("copying stdout: %w", err)
	}
	if _, err := fmt.Fprintf(stderr, "err:%s", req.Command[0]); err != nil {
		return 0, fmt.Errorf("copying stderr: %w", err)
	}
	return 3, nil
}

func (d *fullDriver) Logs(ctx context.Context, name string, opts drivers.LogOptions, emit func(drivers.LogLine) error) error {
	d.mu.Lock()
	d.lastLogs = opts
	d.mu.Unlock()
	if err := d.enter(ctx, "logs"); err != nil {
		return err
	}
	for i := 0; i < opts.Lines && i < 3; i++ {
		if err := emit(drivers.LogLine{Stream: "stdout", Line: fmt.Sprint("line ", i)}); err != nil {
			return err
		}
	}
	if opts.Follow {
		<-ctx.Done()
	}
	return nil
}

func (d *fullDriver) GetLimits(ctx context.Context, name string) (drivers.ResourceLimits, error) {
	return drivers.ResourceLimits{CPUCores: 1}, d.enter(ctx, "limits-get")
}

func (d *fullDriver) SetLimits(ctx context.Context, name string, l drivers.ResourceLimits) (drivers.ResourceLimits, error) {
	return l, d.enter(ctx, "limits-set")
}

func (d *fullDriver) CreateSnapshot(ctx context.Context, name, snap string) (drivers.Snapshot, error) {
	return drivers.Snapshot{Name: snap, Instance: name}, d.enter(ctx, "snapshot-create")
}

func (d *fullDriver) RestoreSnapshot(ctx context.Context, name, snap string) error {
	return d.enter(ctx, "snapshot-restore")
}

func (d *fullDriver) ListSnapshots(ctx context.Context, name string) ([]drivers.Snapshot, error) {
	return []drivers.Snapshot{{Name: "s1", Instance: name}}, d.enter(ctx, "snapshot-list")
}

func (d *fullDriver) DeleteSnapshot(ctx context.Context, name, snap string) error {
	return d.enter(ctx, "snapshot-delete")
}

func (d *fullDriver) Clone(ctx context.Context, source, target string) (drivers.Instance, error) {
	if err := d.enter(ctx, "clone"); err != nil {
		return drivers.Instance{}, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	src, err := d.lookup(source)
	if err != nil {
		return drivers.Instance{}, err
	}
	if _, ok := d.instances[target]; ok {
		return drivers.Instance{}, drivers.Errorf(drivers.AlreadyExists, "instance %s exists", target)
	}
	c := *src
	c.Name, c.ID, c.State = target, "id-"+target, drivers.StateStopped
	d.instances[target] = &c
	return c, nil
}

func (d *fullDriver) ListNetworks(ctx context.Context) ([]drivers.Network, error) {
	return []drivers.Network{{Name: "net0"}}, d.enter(ctx, "network-list")
}

func (d *fullDriver) AttachNetwork(ctx context.Context, name string, cfg drivers.NetworkConfig) (bool, error) {
	if err := d.enter(ctx, "network-attach"); err != nil {
		return false, err
	}
	_, already := d.attached.LoadOrStore(name+"/"+cfg.NetworkName, true)
	return !already, nil
}

func (d *fullDriver) DetachNetwork(ctx context.Context, name, network string) error {
	if err := d.enter(ctx, "network-detach"); err != nil {
		return err
	}
	d.attached.Delete(name + "/" + network)
	return nil
}

// Watch feeds events from d.events until ctx ends, or ends early with the
// next error queued in d.watchErrs.
func (d *fullDriver) Watch(ctx context.Context, emit func(drivers.Event)) error {
	d.mu.Lock()
	d.calls["watch"]++
	d.mu.Unlock()
	select {
	case err := <-d.watchErrs:
		if err != nil {
			return err
		}
	default:
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev := <-d.events:
			emit(ev)
		}
	}
}

// restartDriver has a native restart.
type restartDriver struct{ *scriptDriver }

func (d restartDriver) Restart(ctx context.Context, name string, opts drivers.StopOptions) error {
	_, err := d.setState(ctx, "restart", name, drivers.StateRunning)
	return err
}

var (
	_ drivers.Driver      = (*scriptDriver)(nil)
	_ drivers.Execer      = (*fullDriver)(nil)
	_ drivers.LogReader   = (*fullDriver)(nil)
	_ drivers.Limiter     = (*fullDriver)(nil)
	_ drivers.Snapshotter = (*fullDriver)(nil)
	_ drivers.Cloner      = (*fullDriver)(nil)
	_ drivers.Networker   = (*fullDriver)(nil)
	_ drivers.EventSource = (*fullDriver)(nil)
	_ drivers.Restarter   = restartDriver{}
	_ io.Writer           = (*limitWriter)(nil)
)
