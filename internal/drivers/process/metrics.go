package process

import (
	"context"

	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/internal/procfs"
)

// Metrics samples the instance's whole process tree from /proc (see
// procfs.TreeSample for what is counted): CPU time and %, resident memory
// and disk I/O, with rates from the previous sample. Network and disk
// space are not measured. A stopped instance gives zeros.
func (d *Driver) Metrics(ctx context.Context, name string) (drivers.ResourceUsage, error) {
	d.mu.Lock()
	in, err := d.lookup(name)
	if err != nil {
		d.mu.Unlock()
		return drivers.ResourceUsage{}, err
	}
	running := in.rec.State == drivers.StateRunning
	pid, ticks := in.rec.Pid, in.rec.StartTicks
	prev := in.prev
	d.mu.Unlock()

	if !running || !procfs.Alive(pid, ticks) {
		return procfs.IdleUsage(), nil
	}
	cur, err := procfs.SampleTree(pid, ticks)
	if err != nil {
		return procfs.IdleUsage(), nil // it exited just now
	}
	u := cur.Usage(prev)
	d.mu.Lock()
	if d.insts[name] == in {
		in.prev = &cur
	}
	d.mu.Unlock()
	return u, nil
}
