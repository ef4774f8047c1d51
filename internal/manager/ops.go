package manager

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"

	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/internal/resilience"
	"github.com/subbus/subbus/messages"
)

// MaxExecOutput bounds what Exec collects per stream when the caller gives
// no writers; output beyond it is dropped.
const MaxExecOutput = 16 << 20

// List returns every instance. An
// unreachable substrate is an Unavailable error, never a list of
// instances in a made-up state.
func (m *Manager) List(ctx context.Context) ([]drivers.Instance, error) {
	if l, ok := m.cache.getList(); ok {
		m.stats.hit("list")
		return l, nil
	}
	gen := m.cache.generation()
	l, err := run(m, ctx, driverCall{op: "list", retry: true}, m.d.List)
	if err != nil {
		return nil, err
	}
	out := make([]drivers.Instance, len(l))
	for k, i := range l {
		out[k] = m.stamp(i)
	}
	m.cache.putList(gen, out)
	return out, nil
}

// Get returns one instance or NotFound.
func (m *Manager) Get(ctx context.Context, name string) (drivers.Instance, error) {
	if err := m.names.Check("name", name, false); err != nil {
		return drivers.Instance{}, m.reject("get", err)
	}
	if i, ok := m.cache.get(name); ok {
		m.stats.hit("get")
		return i, nil
	}
	gen := m.cache.generation()
	i, err := run(m, ctx, driverCall{op: "get", retry: true, subj: subject{instance: name}}, func(ctx context.Context) (drivers.Instance, error) {
		return m.d.Get(ctx, name)
	})
	if err != nil {
		return drivers.Instance{}, err
	}
	i = m.stamp(i)
	m.cache.put(gen, i)
	return i, nil
}

// Cached returns name's instance when the cache holds it, exactly as Get
// would return it (counted as a cache hit), and never calls the driver: ok
// is false when the cache does not hold it (or the name is invalid: Get
// reports that). The worker answers such a get without a goroutine of its
// own.
func (m *Manager) Cached(name string) (drivers.Instance, bool) {
	if drivers.ValidateName("name", name) != nil {
		return drivers.Instance{}, false
	}
	i, ok := m.cache.get(name)
	if ok {
		m.stats.hit("get")
	}
	return i, ok
}

// Create creates an instance from a template (create_from_template); emits
// created. It is never retried: a create that timed out may have happened.
func (m *Manager) Create(ctx context.Context, t drivers.InstanceTemplate) (drivers.Instance, error) {
	if err := ValidateTemplate(t); err != nil {
		return drivers.Instance{}, m.reject("create", err)
	}
	if err := m.names.Check("template.name", t.Name, true); err != nil {
		return drivers.Instance{}, m.reject("create", err)
	}
	var inst drivers.Instance
	err := m.mutate(ctx, "create", []string{t.Name}, func(ctx context.Context, fl *flight) error {
		i, err := run(m, ctx, driverCall{op: "create", flight: fl, subj: subject{instance: t.Name, template: &t}}, func(ctx context.Context) (drivers.Instance, error) {
			return m.d.Create(ctx, t)
		})
		inst = i
		return err
	})
	if err != nil {
		m.emitFailed(ctx, "create", t.Name, nil, err)
		return drivers.Instance{}, err
	}
	inst = m.stamp(inst)
	m.emitState(ctx, drivers.EventCreated, t.Name, inst.State, map[string]string{"image": t.BaseImage})
	return inst, nil
}

// emitState emits a successful mutation's event carrying the new state.
func (m *Manager) emitState(ctx context.Context, typ drivers.EventType, instance string, st drivers.State, details map[string]string) {
	m.publish(messages.Event{
		Type:      typ,
		Instance:  instance,
		RequestID: drivers.RequestID(ctx),
		Source:    messages.SourceManager,
		State:     st,
		Details:   details,
	})
}

// Start starts an instance; changed=false when it was already running
// (then no started event is emitted).
func (m *Manager) Start(ctx context.Context, name string) (bool, error) {
	if err := m.names.Check("name", name, false); err != nil {
		return false, m.reject("start", err)
	}
	var changed bool
	err := m.mutate(ctx, "start", []string{name}, func(ctx context.Context, fl *flight) (err error) {
		changed, err = m.start(ctx, name, fl)
		return err
	})
	if err != nil {
		m.emitFailed(ctx, "start", name, nil, err)
		return false, err
	}
	if changed {
		m.emitState(ctx, drivers.EventStarted, name, drivers.StateRunning, nil)
	}
	return changed, nil
}

func (m *Manager) start(ctx context.Context, name string, fl *flight) (bool, error) {
	return run(m, ctx, driverCall{op: "start", retry: true, flight: fl, subj: subject{instance: name}}, func(ctx context.Context) (bool, error) {
		return m.d.Start(ctx, name)
	})
}

// stopOptions checks opts and applies the default graceful timeout.
func (m *Manager) stopOptions(opts drivers.StopOptions) (drivers.StopOptions, error) {
	if opts.Timeout < 0 {
		return opts, invalid("stop.timeout", "%v is negative", opts.Timeout)
	}
	if !opts.Force && opts.Timeout == 0 {
		opts.Timeout = m.opts.StopTimeout
	}
	return opts, nil
}

// Stop stops an instance; changed=false when it was already stopped (then
// no stopped event is emitted). Without Force and Timeout, the graceful
// timeout is Options.StopTimeout.
func (m *Manager) Stop(ctx context.Context, name string, opts drivers.StopOptions) (bool, error) {
	if err := m.names.Check("name", name, false); err != nil {
		return false, m.reject("stop", err)
	}
	opts, err := m.stopOptions(opts)
	if err != nil {
		return false, m.reject("stop", err)
	}
	var changed bool
	err = m.mutate(ctx, "stop", []string{name}, func(ctx context.Context, fl *flight) (err error) {
		changed, err = m.stop(ctx, name, opts, fl)
		return err
	})
	if err != nil {
		m.emitFailed(ctx, "stop", name, nil, err)
		return false, err
	}
	if changed {
		m.emitState(ctx, drivers.EventStopped, name, drivers.StateStopped, stopDetails(opts))
	}
	return changed, nil
}

func (m *Manager) stop(ctx context.Context, name string, opts drivers.StopOptions, fl *flight) (bool, error) {
	return run(m, ctx, driverCall{op: "stop", retry: true, flight: fl, subj: subject{instance: name}}, func(ctx context.Context) (bool, error) {
		return m.d.Stop(ctx, name, opts)
	})
}

func stopDetails(opts drivers.StopOptions) map[string]string {
	if opts.Force {
		return map[string]string{"force": "true"}
	}
	return nil
}

// Restart restarts an instance with the driver's native restart when it
// has one (not retried), else by stop then start (each retried) under one
// lock; emits restarted.
func (m *Manager) Restart(ctx context.Context, name string, opts drivers.StopOptions) error {
	if err := m.names.Check("name", name, false); err != nil {
		return m.reject("restart", err)
	}
	opts, err := m.stopOptions(opts)
	if err != nil {
		return m.reject("restart", err)
	}
	err = m.mutate(ctx, "restart", []string{name}, func(ctx context.Context, fl *flight) error {
		if r, ok := m.d.(drivers.Restarter); ok {
			_, err := run(m, ctx, driverCall{op: "restart", flight: fl, subj: subject{instance: name}}, func(ctx context.Context) (struct{}, error) {
				return struct{}{}, r.Restart(ctx, name, opts)
			})
			return err
		}
		if _, err := m.stop(ctx, name, opts, fl); err != nil {
			return err
		}
		_, err := m.start(ctx, name, fl)
		return err
	})
	if err != nil {
		m.emitFailed(ctx, "restart", name, nil, err)
		return err
	}
	m.emitState(ctx, drivers.EventRestarted, name, drivers.StateRunning, stopDetails(opts))
	return nil
}

// Delete deletes an instance; changed=false when forced on a missing one
// (then no deleted event is emitted). Only a forced delete is retried: an
// unforced retry after a delete that happened would be NotFound.
func (m *Manager) Delete(ctx context.Context, name string, opts drivers.DeleteOptions) (bool, error) {
	if err := m.names.Check("name", name, false); err != nil {
		return false, m.reject("delete", err)
	}
	var changed bool
	err := m.mutate(ctx, "delete", []string{name}, func(ctx context.Context, fl *flight) (err error) {
		changed, err = run(m, ctx, driverCall{op: "delete", retry: opts.Force, flight: fl, subj: subject{instance: name}}, func(ctx context.Context) (bool, error) {
			return m.d.Delete(ctx, name, opts)
		})
		return err
	})
	if err != nil {
		m.emitFailed(ctx, "delete", name, nil, err)
		return false, err
	}
	if changed {
		var d map[string]string
		if opts.Force {
			d = map[string]string{"force": "true"}
		}
		m.emitState(ctx, drivers.EventDeleted, name, "", d)
	}
	return changed, nil
}

// Metrics returns one usage sample.
func (m *Manager) Metrics(ctx context.Context, name string) (drivers.ResourceUsage, error) {
	if err := m.names.Check("name", name, false); err != nil {
		return drivers.ResourceUsage{}, m.reject("metrics", err)
	}
	return run(m, ctx, driverCall{op: "metrics", retry: true, subj: subject{instance: name}}, func(ctx context.Context) (drivers.ResourceUsage, error) {
		return m.d.Metrics(ctx, name)
	})
}

// MetricsBatchParallelism bounds concurrent Metrics calls when a driver
// has no MetricsBatch of its own.
const MetricsBatchParallelism = 8

// MetricsBatch samples many instances: through the driver's MetricsBatch
// when it has one (one breaker-guarded call), else through Metrics calls,
// at most MetricsBatchParallelism at a time. Invalid names fail on their
// own; the others are still sampled.
func (m *Manager) MetricsBatch(ctx context.Context, names []string) (map[string]drivers.ResourceUsage, map[string]error, error) {
	failed := map[string]error{}
	valid := make([]string, 0, len(names))
	for _, n := range names {
		if err := m.names.Check("name", n, false); err != nil {
			failed[n] = m.reject("metrics", err)
			continue
		}
		valid = append(valid, n)
	}
	if b, ok := m.d.(drivers.MetricsBatcher); ok {
		type batch struct {
			samples map[string]drivers.ResourceUsage
			failed  map[string]error
		}
		res, err := run(m, ctx, driverCall{op: "metrics", retry: true}, func(ctx context.Context) (batch, error) {
			s, f, err := b.MetricsBatch(ctx, valid)
			return batch{s, f}, err
		})
		if err != nil {
			return nil, nil, err
		}
		for n, err := range res.failed {
			failed[n] = m.shape(ctx, driverCall{op: "metrics", subj: subject{instance: n}}, m.classify(ctx, "metrics", err))
		}
		return res.samples, failed, nil
	}
	var (
		mu      sync.Mutex
		wg      sync.WaitGroup
		samples = make(map[string]drivers.ResourceUsage, len(valid))
		sem     = make(chan struct{}, MetricsBatchParallelism)
	)
	for _, n := range valid {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			u, err := m.Metrics(ctx, n)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				failed[n] = err
				return
			}
			samples[n] = u
		}()
	}
	wg.Wait()
	return samples, failed, nil
}

// Health reports the substrate's health (bounded by ConnectionTimeout),
// with the circuit breaker's state in Details["breaker"] and, unless
// closed, an issue. On error the returned Health is unhealthy and carries
// the same details, so callers may publish it either way.
func (m *Manager) Health(ctx context.Context) (drivers.Health, error) {
	h, err := run(m, ctx, driverCall{op: "health", retry: true, timeout: m.opts.ConnectionTimeout}, m.d.Health)
	if err != nil {
		h = drivers.Health{Healthy: false, Issues: []string{err.Error()}}
	} else {
		m.mu.Lock()
		m.lastCheck = m.now()
		m.mu.Unlock()
		m.setConnected(true)
	}
	if h.Details == nil {
		h.Details = map[string]string{}
	}
	st := m.BreakerState()
	h.Details["breaker"] = st
	h.Details["breaker_consecutive_failures"] = strconv.Itoa(m.breaker.ConsecutiveFailures())
	h.Details["connected"] = strconv.FormatBool(m.IsConnected())
	if st != string(resilience.BreakerClosed) {
		h.Issues = append(h.Issues, fmt.Sprintf("circuit breaker is %s", st))
	}
	return h, err
}

// limitWriter keeps at most n bytes.
type limitWriter struct {
	buf bytes.Buffer
	n   int
}

func (w *limitWriter) Write(p []byte) (int, error) {
	if room := w.n - w.buf.Len(); room > 0 {
		if len(p) > room {
			w.buf.Write(p[:room])
		} else {
			w.buf.Write(p)
		}
	}
	return len(p), nil
}

// errWriter remembers the first error of the writer it wraps.
type errWriter struct {
	w   drivers.Writer
	mu  sync.Mutex
	err error
}

func (e *errWriter) Write(p []byte) (int, error) {
	n, err := e.w.Write(p)
	if err != nil {
		e.mu.Lock()
		if e.err == nil {
			e.err = err
		}
		e.mu.Unlock()
	}
	return n, err
}

// failed returns the writer error of e or other that err carries, if any.
func (e *errWriter) failed(err error, other *errWriter) error {
	if err == nil {
		return nil
	}
	for _, w := range []*errWriter{e, other} {
		w.mu.Lock()
		werr := w.err
		w.mu.Unlock()
		if werr != nil && errors.Is(err, werr) {
			return werr
		}
	}
	return nil
}

// Exec runs a command. With nil writers the output is collected into the
// result's Stdout/Stderr (at most MaxExecOutput bytes each); otherwise it
// is streamed to the writers; an error of a writer that ends the exec is
// returned as it is. Exec is not a lifecycle mutation: it takes
// no instance lock, emits no event and is never retried.
func (m *Manager) Exec(ctx context.Context, name string, req drivers.ExecRequest, stdout, stderr drivers.Writer) (messages.ExecResult, error) {
	if err := m.names.Check("name", name, false); err != nil {
		return messages.ExecResult{}, m.reject("exec", err)
	}
	if err := validateExec(req); err != nil {
		return messages.ExecResult{}, m.reject("exec", err)
	}
	x, ok := m.d.(drivers.Execer)
	if !ok || !m.caps.Exec {
		return messages.ExecResult{}, m.unsupported("exec")
	}
	var outBuf, errBuf *limitWriter
	if stdout == nil {
		outBuf = &limitWriter{n: MaxExecOutput}
		stdout = outBuf
	}
	if stderr == nil {
		errBuf = &limitWriter{n: MaxExecOutput}
		stderr = errBuf
	}
	ow, ew := &errWriter{w: stdout}, &errWriter{w: stderr}
	code, err := run(m, ctx, driverCall{op: "exec", sync: true, subj: subject{instance: name}}, func(ctx context.Context) (int, error) {
		code, err := x.Exec(ctx, name, req, ow, ew)
		if werr := ow.failed(err, ew); werr != nil {
			// The caller's writer failed, not the substrate: keep it away from the breaker.
			return code, drivers.Wrap(drivers.Internal, err, "exec: output writer failed")
		}
		return code, err
	})
	if werr := ow.failed(err, ew); werr != nil {
		return messages.ExecResult{}, werr
	}
	if err != nil {
		return messages.ExecResult{}, err
	}
	res := messages.ExecResult{ExitCode: code}
	if outBuf != nil {
		res.Stdout = outBuf.buf.Bytes()
	}
	if errBuf != nil {
		res.Stderr = errBuf.buf.Bytes()
	}
	return res, nil
}

// Logs emits the last opts.Lines lines (default LogLines, at most
// MaxLogLines) and, with opts.Follow, new lines until ctx ends. A follow
// has no default deadline: it runs until the caller's ctx ends. An error
// returned by emit stops reading and is returned as it is.
func (m *Manager) Logs(ctx context.Context, name string, opts drivers.LogOptions, emit func(drivers.LogLine) error) error {
	if err := m.names.Check("name", name, false); err != nil {
		return m.reject("logs", err)
	}
	if opts.Lines < 0 {
		return m.reject("logs", invalid("logs.lines", "%d is negative", opts.Lines))
	}
	if opts.Lines == 0 {
		opts.Lines = m.opts.LogLines
	}
	if opts.Lines > MaxLogLines {
		return m.reject("logs", invalid("logs.lines", "%d is more than %d", opts.Lines, MaxLogLines))
	}
	lr, ok := m.d.(drivers.LogReader)
	if !ok || !m.caps.Logs {
		return m.unsupported("logs")
	}
	var emitErr error
	relay := func(l drivers.LogLine) error {
		if err := emit(l); err != nil {
			emitErr = err
			return err
		}
		return nil
	}
	_, err := run(m, ctx, driverCall{op: "logs", sync: true, unbounded: opts.Follow, subj: subject{instance: name}}, func(ctx context.Context) (struct{}, error) {
		err := lr.Logs(ctx, name, opts, relay)
		if emitErr != nil && errors.Is(err, emitErr) {
			// Not the substrate's failure: keep it away from the breaker.
			return struct{}{}, drivers.Wrap(drivers.Internal, err, "logs: emit failed")
		}
		return struct{}{}, err
	})
	if emitErr != nil && errors.Is(err, emitErr) {
		return emitErr // the caller's own error, unclassified by us
	}
	return err
}

// GetLimits returns an instance's resource limits.
func (m *Manager) GetLimits(ctx context.Context, name string) (drivers.ResourceLimits, error) {
	if err := m.names.Check("name", name, false); err != nil {
		return drivers.ResourceLimits{}, m.reject("limits-get", err)
	}
	l, ok := m.d.(drivers.Limiter)
	if !ok || !m.caps.Limits {
		return drivers.ResourceLimits{}, m.unsupported("limits-get")
	}
	return run(m, ctx, driverCall{op: "limits-get", retry: true, subj: subject{instance: name}}, func(ctx context.Context) (drivers.ResourceLimits, error) {
		return l.GetLimits(ctx, name)
	})
}

// SetLimits applies the non-zero fields of limits and returns the limits
// now in force; emits limits_changed (ChangeLimits without removals).
func (m *Manager) SetLimits(ctx context.Context, name string, limits drivers.ResourceLimits) (drivers.ResourceLimits, error) {
	return m.ChangeLimits(ctx, name, limits, nil)
}

// UnsetLimits removes the named limits (ChangeLimits without values).
func (m *Manager) UnsetLimits(ctx context.Context, name string, fields []drivers.LimitField) (drivers.ResourceLimits, error) {
	return m.ChangeLimits(ctx, name, drivers.ResourceLimits{}, fields)
}

// ChangeLimits removes the limits named in unset (drivers.LimitUnsetter;
// unsupported, before anything changed, where the driver cannot), then
// applies the non-zero fields of limits, and returns the limits now in
// force; emits limits_changed. It serves the limits-set op.
func (m *Manager) ChangeLimits(ctx context.Context, name string, limits drivers.ResourceLimits, unset []drivers.LimitField) (drivers.ResourceLimits, error) {
	if err := m.names.Check("name", name, false); err != nil {
		return drivers.ResourceLimits{}, m.reject("limits-set", err)
	}
	if err := validateLimits("limits", limits); err != nil {
		return drivers.ResourceLimits{}, m.reject("limits-set", err)
	}
	if err := validateUnset(limits, unset); err != nil {
		return drivers.ResourceLimits{}, m.reject("limits-set", err)
	}
	if limits.IsZero() && len(unset) == 0 {
		return drivers.ResourceLimits{}, m.reject("limits-set", invalid("limits", "no limit given"))
	}
	l, ok := m.d.(drivers.Limiter)
	if !ok || !m.caps.Limits {
		return drivers.ResourceLimits{}, m.unsupported("limits-set")
	}
	u, canUnset := m.d.(drivers.LimitUnsetter)
	if len(unset) > 0 && !canUnset {
		return drivers.ResourceLimits{}, m.reject("limits-set",
			drivers.Unsupportedf("limits-set: driver %s cannot remove a limit (unset %s)", m.d.Name(), unset[0]))
	}
	var out drivers.ResourceLimits
	err := m.mutate(ctx, "limits-set", []string{name}, func(ctx context.Context, fl *flight) (err error) {
		// Removals first: a removal the substrate cannot do is refused
		// before anything changed.
		if len(unset) > 0 {
			out, err = run(m, ctx, driverCall{op: "limits-set", flight: fl, subj: subject{instance: name}}, func(ctx context.Context) (drivers.ResourceLimits, error) {
				return u.UnsetLimits(ctx, name, unset)
			})
			if err != nil {
				return err
			}
		}
		if !limits.IsZero() {
			out, err = run(m, ctx, driverCall{op: "limits-set", flight: fl, subj: subject{instance: name}}, func(ctx context.Context) (drivers.ResourceLimits, error) {
				return l.SetLimits(ctx, name, limits)
			})
		}
		return err
	})
	if err != nil {
		m.emitFailed(ctx, "limits-set", name, nil, err)
		return drivers.ResourceLimits{}, err
	}
	m.emitState(ctx, drivers.EventLimitsChanged, name, "", limitDetails(out))
	return out, nil
}

// validateUnset checks the fields to remove: known, not repeated, and not
// also given a value.
func validateUnset(limits drivers.ResourceLimits, unset []drivers.LimitField) error {
	seen := map[drivers.LimitField]bool{}
	for _, f := range unset {
		if !slices.Contains(drivers.LimitFields(), f) {
			return invalid("unset", "unknown limit field %q (want one of cpu_cores, memory_mb, disk_gb, network_mbps, pids)", string(f))
		}
		if seen[f] {
			return invalid("unset", "%s given twice", f)
		}
		seen[f] = true
		if limits.Value(f) != 0 {
			return invalid("unset", "%s is both set and removed", f)
		}
	}
	return nil
}

func limitDetails(l drivers.ResourceLimits) map[string]string {
	d := map[string]string{}
	f := func(k string, v float64) {
		if v != 0 {
			d[k] = strconv.FormatFloat(v, 'g', -1, 64)
		}
	}
	f("cpu_cores", l.CPUCores)
	f("memory_mb", float64(l.MemoryMB))
	f("disk_gb", l.DiskGB)
	f("network_mbps", l.NetworkMbps)
	f("pids", float64(l.PIDs))
	return d
}

func (m *Manager) snapshotter(op string) (drivers.Snapshotter, error) {
	s, ok := m.d.(drivers.Snapshotter)
	if !ok || !m.caps.Snapshots {
		return nil, m.unsupported(op)
	}
	return s, nil
}

// validateNames checks an instance name (the driver's rule) and the name
// of a second object (snapshot, network: the generic rule).
func (m *Manager) validateNames(name, field, other string) error {
	if err := m.names.Check("name", name, false); err != nil {
		return err
	}
	return drivers.ValidateName(field, other)
}

// CreateSnapshot snapshots an instance; emits snapshot_created. Not retried.
func (m *Manager) CreateSnapshot(ctx context.Context, name, snapshot string) (drivers.Snapshot, error) {
	const op = "snapshot-create"
	if err := m.validateNames(name, "snapshot", snapshot); err != nil {
		return drivers.Snapshot{}, m.reject(op, err)
	}
	s, err := m.snapshotter(op)
	if err != nil {
		return drivers.Snapshot{}, err
	}
	var out drivers.Snapshot
	err = m.mutate(ctx, op, []string{name}, func(ctx context.Context, fl *flight) (err error) {
		out, err = run(m, ctx, driverCall{op: op, flight: fl, subj: subject{instance: name, snapshot: snapshot}}, func(ctx context.Context) (drivers.Snapshot, error) {
			return s.CreateSnapshot(ctx, name, snapshot)
		})
		return err
	})
	details := map[string]string{"snapshot": snapshot}
	if err != nil {
		m.emitFailed(ctx, op, name, details, err)
		return drivers.Snapshot{}, err
	}
	m.emitState(ctx, drivers.EventSnapshotCreated, name, "", details)
	return out, nil
}

// RestoreSnapshot restores an instance to a snapshot; emits snapshot_restored.
func (m *Manager) RestoreSnapshot(ctx context.Context, name, snapshot string) error {
	return m.changeSnapshot(ctx, "snapshot-restore", name, snapshot, drivers.EventSnapshotRestored,
		func(ctx context.Context, s drivers.Snapshotter) error { return s.RestoreSnapshot(ctx, name, snapshot) })
}

// changeSnapshot runs a snapshot mutation that returns no value (restore,
// delete): names checked, capability checked, instance locked, event ev.
func (m *Manager) changeSnapshot(ctx context.Context, op, name, snapshot string, ev drivers.EventType,
	fn func(ctx context.Context, s drivers.Snapshotter) error) error {
	if err := m.validateNames(name, "snapshot", snapshot); err != nil {
		return m.reject(op, err)
	}
	s, err := m.snapshotter(op)
	if err != nil {
		return err
	}
	return m.mutateOne(ctx, op, subject{instance: name, snapshot: snapshot}, ev, map[string]string{"snapshot": snapshot},
		func(ctx context.Context) error { return fn(ctx, s) })
}

// ListSnapshots lists an instance's snapshots.
func (m *Manager) ListSnapshots(ctx context.Context, name string) ([]drivers.Snapshot, error) {
	const op = "snapshot-list"
	if err := m.names.Check("name", name, false); err != nil {
		return nil, m.reject(op, err)
	}
	s, err := m.snapshotter(op)
	if err != nil {
		return nil, err
	}
	return run(m, ctx, driverCall{op: op, retry: true, subj: subject{instance: name}}, func(ctx context.Context) ([]drivers.Snapshot, error) {
		return s.ListSnapshots(ctx, name)
	})
}

// DeleteSnapshot deletes a snapshot; emits snapshot_deleted.
func (m *Manager) DeleteSnapshot(ctx context.Context, name, snapshot string) error {
	return m.changeSnapshot(ctx, "snapshot-delete", name, snapshot, drivers.EventSnapshotDeleted,
		func(ctx context.Context, s drivers.Snapshotter) error { return s.DeleteSnapshot(ctx, name, snapshot) })
}

// Clone copies source to a new, stopped instance target, holding the
// locks of both; emits cloned (Instance = target, Details["source"]).
func (m *Manager) Clone(ctx context.Context, source, target string) (drivers.Instance, error) {
	const op = "clone"
	if err := m.names.Check("source", source, false); err != nil {
		return drivers.Instance{}, m.reject(op, err)
	}
	if err := m.names.Check("target", target, true); err != nil {
		return drivers.Instance{}, m.reject(op, err)
	}
	if source == target {
		return drivers.Instance{}, m.reject(op, invalid("target", "must differ from the source"))
	}
	c, ok := m.d.(drivers.Cloner)
	if !ok || !m.caps.Clone {
		return drivers.Instance{}, m.unsupported(op)
	}
	var inst drivers.Instance
	err := m.mutate(ctx, op, []string{source, target}, func(ctx context.Context, fl *flight) (err error) {
		inst, err = run(m, ctx, driverCall{op: op, flight: fl, subj: subject{instance: source, target: target}}, func(ctx context.Context) (drivers.Instance, error) {
			return c.Clone(ctx, source, target)
		})
		return err
	})
	details := map[string]string{"source": source}
	if err != nil {
		m.emitFailed(ctx, op, target, details, err)
		return drivers.Instance{}, err
	}
	inst = m.stamp(inst)
	m.emitState(ctx, drivers.EventCloned, target, inst.State, details)
	return inst, nil
}

func (m *Manager) networker(op string) (drivers.Networker, error) {
	n, ok := m.d.(drivers.Networker)
	if !ok || !m.caps.Networks {
		return nil, m.unsupported(op)
	}
	return n, nil
}

// ListNetworks lists the substrate's networks.
func (m *Manager) ListNetworks(ctx context.Context) ([]drivers.Network, error) {
	const op = "network-list"
	n, err := m.networker(op)
	if err != nil {
		return nil, err
	}
	return run(m, ctx, driverCall{op: op, retry: true}, n.ListNetworks)
}

// AttachNetwork attaches an instance to a network; emits network_attached.
// Attaching to a network the instance is already on succeeds with
// changed=false and emits nothing.
func (m *Manager) AttachNetwork(ctx context.Context, name string, cfg drivers.NetworkConfig) (bool, error) {
	const op = "network-attach"
	if err := m.names.Check("name", name, false); err != nil {
		return false, m.reject(op, err)
	}
	if err := validateNetworkConfig("network", cfg); err != nil {
		return false, m.reject(op, err)
	}
	n, err := m.networker(op)
	if err != nil {
		return false, err
	}
	details := map[string]string{"network": cfg.NetworkName}
	if cfg.IPAddress != "" {
		details["ip_address"] = cfg.IPAddress
	}
	var changed bool
	err = m.mutate(ctx, op, []string{name}, func(ctx context.Context, fl *flight) error {
		var err error
		changed, err = run(m, ctx, driverCall{op: op, flight: fl, subj: subject{instance: name, network: cfg.NetworkName}}, func(ctx context.Context) (bool, error) {
			return n.AttachNetwork(ctx, name, cfg)
		})
		return err
	})
	if err != nil {
		m.emitFailed(ctx, op, name, details, err)
		return false, err
	}
	if changed {
		m.emitState(ctx, drivers.EventNetworkAttached, name, "", details)
	}
	return changed, nil
}

// DetachNetwork detaches an instance from a network; emits network_detached.
func (m *Manager) DetachNetwork(ctx context.Context, name, network string) error {
	const op = "network-detach"
	if err := m.validateNames(name, "network", network); err != nil {
		return m.reject(op, err)
	}
	n, err := m.networker(op)
	if err != nil {
		return err
	}
	return m.mutateOne(ctx, op, subject{instance: name, network: network}, drivers.EventNetworkDetached, map[string]string{"network": network},
		func(ctx context.Context) error { return n.DetachNetwork(ctx, name, network) })
}

// mutateOne runs a mutation of one instance that returns only an error:
// under the instance's lock, through run (breaker, timeouts; no retries),
// then emits ev with details, or failed with the error.
func (m *Manager) mutateOne(ctx context.Context, op string, subj subject, ev drivers.EventType, details map[string]string, fn func(ctx context.Context) error) error {
	name := subj.instance
	err := m.mutate(ctx, op, []string{name}, func(ctx context.Context, fl *flight) error {
		_, err := run(m, ctx, driverCall{op: op, flight: fl, subj: subj}, func(ctx context.Context) (struct{}, error) {
			return struct{}{}, fn(ctx)
		})
		return err
	})
	if err != nil {
		m.emitFailed(ctx, op, name, details, err)
		return err
	}
	m.emitState(ctx, ev, name, "", details)
	return nil
}
