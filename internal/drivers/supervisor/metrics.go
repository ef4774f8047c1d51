package supervisor

import (
	"context"

	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/internal/procfs"
)

// Metrics samples the program's process tree from /proc (see
// procfs.TreeSample): CPU time and % since the previous sample, resident
// memory and disk I/O. Network is not measured (programs share the host's
// network namespace). A program with no process gives a zero sample. It
// assumes supervisord runs on this host.
func (d *Driver) Metrics(ctx context.Context, name string) (drivers.ResourceUsage, error) {
	ctx, cancel := d.ctx(ctx)
	defer cancel()
	p, err := d.rpc.getProcessInfo(ctx, name)
	if err != nil {
		return drivers.ResourceUsage{}, err
	}
	var cur procfs.TreeSample
	if p.PID > 0 {
		cur, err = procfs.SampleTree(p.PID, 0)
	}
	if p.PID == 0 || err != nil {
		d.mu.Lock()
		delete(d.samples, name)
		d.mu.Unlock()
		return procfs.IdleUsage(), nil
	}
	d.mu.Lock()
	prev, ok := d.samples[name]
	d.samples[name] = cur
	d.mu.Unlock()
	if !ok {
		return cur.Usage(nil), nil
	}
	return cur.Usage(&prev), nil
}
