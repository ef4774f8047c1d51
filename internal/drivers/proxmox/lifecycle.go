package proxmox

import (
	"context"
	"math"
	"time"

	"github.com/subbus/subbus/internal/drivers"
)

// Start starts a stopped guest (resumes a paused VM). A running guest —
// seen before the call, or reported by the start task ("already
// running") — is changed=false.
func (d *Driver) Start(ctx context.Context, name string) (bool, error) {
	r, err := d.find(ctx, name)
	if err != nil {
		return false, err
	}
	switch r.state() {
	case drivers.StateRunning:
		return false, nil
	case drivers.StatePaused:
		return true, d.async(ctx, "POST", r.path()+"/status/resume", nil, "resume "+name)
	}
	err = d.async(ctx, "POST", r.path()+"/status/start", nil, "start "+name)
	if isAlreadyRunning(err) {
		return false, nil
	}
	return err == nil, err
}

// shutdownSeconds is the timeout sent with a graceful shutdown:
// opts.Timeout in whole seconds (at least 1), shortened so that PVE's
// forced stop after it still fits before ctx's deadline.
func shutdownSeconds(ctx context.Context, timeout time.Duration) int {
	secs := int(math.Ceil(timeout.Seconds()))
	if dl, ok := ctx.Deadline(); ok {
		if left := int(time.Until(dl).Seconds()) - 3; left < secs {
			secs = left
		}
	}
	return max(secs, 1)
}

// stop ends a running guest: with force at once (status/stop), else
// status/shutdown with timeout and forceStop, so PVE itself stops the
// guest if the shutdown has not worked within the timeout.
func (d *Driver) stop(ctx context.Context, r resource, opts drivers.StopOptions) error {
	if opts.Force {
		return d.async(ctx, "POST", r.path()+"/status/stop", nil, "stop "+r.displayName())
	}
	if opts.Timeout <= 0 {
		return drivers.Errorf(drivers.InvalidArgument, "proxmox: stop: a graceful stop needs a timeout > 0")
	}
	params := map[string]any{"timeout": shutdownSeconds(ctx, opts.Timeout), "forceStop": true}
	return d.async(ctx, "POST", r.path()+"/status/shutdown", params, "shutdown "+r.displayName())
}

// Stop stops a guest: a graceful shutdown (ACPI, or the guest agent when
// the VM has it) that PVE turns into a stop after opts.Timeout, or with
// Force a stop at once. A stopped guest is changed=false.
func (d *Driver) Stop(ctx context.Context, name string, opts drivers.StopOptions) (bool, error) {
	r, err := d.find(ctx, name)
	if err != nil {
		return false, err
	}
	if r.state() == drivers.StateStopped {
		return false, nil
	}
	if err := d.stop(ctx, r, opts); err != nil {
		return false, err
	}
	return true, nil
}

// Restart reboots a running guest: gracefully (status/reboot with the
// timeout; if the guest ignores it, stop then start), or with Force stop
// then start. A stopped guest is started.
func (d *Driver) Restart(ctx context.Context, name string, opts drivers.StopOptions) error {
	r, err := d.find(ctx, name)
	if err != nil {
		return err
	}
	if r.state() != drivers.StateRunning {
		_, err := d.Start(ctx, name)
		return err
	}
	if !opts.Force {
		if opts.Timeout <= 0 {
			return drivers.Errorf(drivers.InvalidArgument, "proxmox: restart: a graceful restart needs a timeout > 0")
		}
		params := map[string]any{"timeout": shutdownSeconds(ctx, opts.Timeout)}
		err := d.async(ctx, "POST", r.path()+"/status/reboot", params, "reboot "+name)
		if err == nil || ctx.Err() != nil || taskText(err) == "" {
			return err
		}
		// The reboot task failed (the guest ignored it): stop, then start.
	}
	if err := d.async(ctx, "POST", r.path()+"/status/stop", nil, "stop "+name); err != nil {
		return err
	}
	return d.async(ctx, "POST", r.path()+"/status/start", nil, "start "+name)
}

// Delete destroys a guest. A running guest is Conflict unless force
// (then it is stopped first). A guest without the `subbus` tag is
// Conflict unless force; guests this driver created are purged with
// their unreferenced disks, others (forced) are deleted without purge.
func (d *Driver) Delete(ctx context.Context, name string, opts drivers.DeleteOptions) (bool, error) {
	r, err := d.find(ctx, name)
	if err != nil {
		if opts.Force && classify(err) == drivers.NotFound {
			return false, nil
		}
		return false, err
	}
	if !r.managed() && !opts.Force {
		return false, drivers.Errorf(drivers.Conflict, "proxmox: guest %s (VMID %d) was not created by subbus (no %q tag); delete it with force", name, r.vmid(), managedTag)
	}
	if r.Template == 1 && !opts.Force {
		return false, drivers.Errorf(drivers.Conflict, "proxmox: guest %s (VMID %d) is a template; delete it with force", name, r.vmid())
	}
	if st := r.state(); st != drivers.StateStopped {
		if !opts.Force {
			return false, drivers.Errorf(drivers.Conflict, "proxmox: guest %s is %s; stop it first or delete with force", name, st)
		}
		if err := d.async(ctx, "POST", r.path()+"/status/stop", nil, "stop "+name); err != nil {
			return false, err
		}
	}
	if err := d.destroy(ctx, r, r.managed()); err != nil {
		if opts.Force && classify(err) == drivers.NotFound {
			return false, nil
		}
		return false, err
	}
	d.metricsMu.Lock()
	delete(d.prev, r.vmid())
	d.metricsMu.Unlock()
	return true, nil
}
