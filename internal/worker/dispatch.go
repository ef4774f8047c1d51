package worker

import (
	"context"

	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/internal/manager"
	"github.com/subbus/subbus/internal/messages"
)

// checkSupported answers unsupported for an op the driver cannot do.
func checkSupported(m *manager.Manager, op messages.Op) error {
	caps := m.Capabilities()
	var ok bool
	switch op {
	case messages.OpExec:
		ok = caps.Exec
	case messages.OpLogs:
		ok = caps.Logs
	case messages.OpLimitsGet, messages.OpLimitsSet:
		ok = caps.Limits
	case messages.OpSnapshotCreate, messages.OpSnapshotRestore, messages.OpSnapshotList, messages.OpSnapshotDelete:
		ok = caps.Snapshots
	case messages.OpClone:
		ok = caps.Clone
	case messages.OpNetworkAttach, messages.OpNetworkDetach, messages.OpNetworkList:
		ok = caps.Networks
	default:
		ok = true
	}
	if !ok {
		return drivers.Unsupportedf("%s: the %s driver does not support this operation", op, m.Driver())
	}
	return nil
}

// dispatch runs a decoded, non-streamed request on the manager and returns
// the result to encode.
func (c *call) dispatch(ctx context.Context, body any) (any, error) {
	m := c.m
	switch r := body.(type) {
	case *messages.EmptyRequest:
		switch c.op {
		case messages.OpList:
			l, err := m.List(ctx)
			if l == nil {
				l = []drivers.Instance{}
			}
			return l, err
		case messages.OpHealth:
			return m.Health(ctx)
		case messages.OpCapabilities:
			caps := m.Capabilities()
			return messages.CapabilitiesResult{Driver: m.Driver(), Host: c.w.host, Capabilities: caps, Ops: caps.Ops()}, nil
		case messages.OpNetworkList:
			l, err := m.ListNetworks(ctx)
			if l == nil {
				l = []drivers.Network{}
			}
			return l, err
		}
	case *messages.NameRequest:
		switch c.op {
		case messages.OpGet:
			return m.Get(ctx, r.Name)
		case messages.OpStart:
			changed, err := m.Start(ctx, r.Name)
			return c.changed(ctx, r.Name, changed, err)
		case messages.OpMetrics:
			return m.Metrics(ctx, r.Name)
		case messages.OpLimitsGet:
			return m.GetLimits(ctx, r.Name)
		case messages.OpSnapshotList:
			l, err := m.ListSnapshots(ctx, r.Name)
			if l == nil {
				l = []drivers.Snapshot{}
			}
			return l, err
		}
	case *messages.CreateRequest:
		return m.Create(ctx, r.Template)
	case *messages.StopRequest:
		if c.op == messages.OpRestart {
			err := m.Restart(ctx, r.Name, r.StopOptions())
			return c.changed(ctx, r.Name, true, err)
		}
		changed, err := m.Stop(ctx, r.Name, r.StopOptions())
		return c.changed(ctx, r.Name, changed, err)
	case *messages.DeleteRequest:
		changed, err := m.Delete(ctx, r.Name, drivers.DeleteOptions{Force: r.Force})
		if err != nil {
			return nil, err
		}
		return messages.ChangedResult{Changed: changed}, nil
	case *messages.ExecRequest:
		return m.Exec(ctx, r.Name, r.ExecRequest, nil, nil)
	case *messages.LogsRequest:
		lines := []drivers.LogLine{}
		err := m.Logs(ctx, r.Name, drivers.LogOptions{Lines: r.Lines}, func(l drivers.LogLine) error {
			lines = append(lines, l)
			return nil
		})
		return lines, err
	case *messages.LimitsSetRequest:
		return m.SetLimits(ctx, r.Name, r.Limits)
	case *messages.SnapshotRequest:
		sm := m
		switch c.op {
		case messages.OpSnapshotCreate:
			return sm.CreateSnapshot(ctx, r.Name, r.Snapshot)
		case messages.OpSnapshotRestore:
			return messages.ChangedResult{Changed: true}, sm.RestoreSnapshot(ctx, r.Name, r.Snapshot)
		case messages.OpSnapshotDelete:
			return messages.ChangedResult{Changed: true}, sm.DeleteSnapshot(ctx, r.Name, r.Snapshot)
		}
	case *messages.CloneRequest:
		return m.Clone(ctx, r.Source, r.Target)
	case *messages.NetworkAttachRequest:
		return messages.ChangedResult{Changed: true}, m.AttachNetwork(ctx, r.Name, r.Network)
	case *messages.NetworkDetachRequest:
		return messages.ChangedResult{Changed: true}, m.DetachNetwork(ctx, r.Name, r.Network)
	}
	return nil, drivers.Errorf(drivers.Internal, "%s: no handler for %T", c.op, body)
}

// changed builds the result of start/stop/restart: whether anything
// changed, and the instance as it is now (best effort).
func (c *call) changed(ctx context.Context, name string, changed bool, err error) (any, error) {
	if err != nil {
		return nil, err
	}
	res := messages.ChangedResult{Changed: changed}
	if inst, err := c.m.Get(ctx, name); err == nil {
		res.Instance = &inst
	}
	return res, nil
}
