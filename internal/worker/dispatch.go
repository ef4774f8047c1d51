package worker

import (
	"context"
	"errors"
	"reflect"
	"strings"

	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/messages"
)

// handler serves one decoded, non-streamed request of its op on the
// request's manager and returns the result to encode. body is the pointer
// messages.NewRequest(op) returned, filled by messages.Decode.
type handler struct {
	body  reflect.Type // the request type served, *messages.NameRequest…
	serve func(ctx context.Context, r *busRequest, body any) (any, error)
}

// handlers maps every op to the code that serves it (what serves stop is
// handlers[messages.OpStop]). A test checks that every op of messages.Ops
// has one and that it accepts the op's request type.
var handlers = map[messages.Op]handler{
	messages.OpList: on(func(ctx context.Context, r *busRequest, _ *messages.EmptyRequest) (any, error) {
		return nonNil(r.m.List(ctx))
	}),
	messages.OpGet: on(func(ctx context.Context, r *busRequest, b *messages.NameRequest) (any, error) {
		return r.m.Get(ctx, b.Name)
	}),
	messages.OpCreate: on(func(ctx context.Context, r *busRequest, b *messages.CreateRequest) (any, error) {
		return r.m.Create(ctx, b.Template.Contract())
	}),
	messages.OpStart: on(func(ctx context.Context, r *busRequest, b *messages.NameRequest) (any, error) {
		changed, err := r.m.Start(ctx, b.Name)
		return r.changed(ctx, b.Name, changed, err)
	}),
	messages.OpStop: on(func(ctx context.Context, r *busRequest, b *messages.StopRequest) (any, error) {
		changed, err := r.m.Stop(ctx, b.Name, b.StopOptions())
		return r.changed(ctx, b.Name, changed, err)
	}),
	messages.OpRestart: on(func(ctx context.Context, r *busRequest, b *messages.StopRequest) (any, error) {
		err := r.m.Restart(ctx, b.Name, b.StopOptions())
		return r.changed(ctx, b.Name, true, err)
	}),
	messages.OpDelete: on(func(ctx context.Context, r *busRequest, b *messages.DeleteRequest) (any, error) {
		changed, err := r.m.Delete(ctx, b.Name, drivers.DeleteOptions{Force: b.Force})
		if err != nil {
			return nil, err
		}
		return messages.ChangedResult{Changed: changed}, nil
	}),
	messages.OpExec: on(func(ctx context.Context, r *busRequest, b *messages.ExecRequest) (any, error) {
		return r.m.Exec(ctx, b.Name, b.Options(), nil, nil)
	}),
	messages.OpLogs: on(func(ctx context.Context, r *busRequest, b *messages.LogsRequest) (any, error) {
		lines := []drivers.LogLine{}
		err := r.m.Logs(ctx, b.Name, drivers.LogOptions{Lines: b.Lines}, func(l drivers.LogLine) error {
			lines = append(lines, l)
			return nil
		})
		return lines, err
	}),
	messages.OpMetrics: on(func(ctx context.Context, r *busRequest, b *messages.NameRequest) (any, error) {
		return r.m.Metrics(ctx, b.Name)
	}),
	messages.OpHealth: on(func(ctx context.Context, r *busRequest, _ *messages.EmptyRequest) (any, error) {
		return r.m.Health(ctx)
	}),
	messages.OpCapabilities: on(func(_ context.Context, r *busRequest, _ *messages.EmptyRequest) (any, error) {
		caps := r.m.Capabilities()
		return messages.CapabilitiesResult{Driver: r.m.Driver(), Host: r.w.host, Capabilities: messages.Capabilities(caps),
			Ops: messages.OpNames(messages.OpsFor(caps)), NameRule: r.m.NameRule().Text}, nil
	}),
	messages.OpLimitsGet: on(func(ctx context.Context, r *busRequest, b *messages.NameRequest) (any, error) {
		return r.m.GetLimits(ctx, b.Name)
	}),
	messages.OpLimitsSet: on(func(ctx context.Context, r *busRequest, b *messages.LimitsSetRequest) (any, error) {
		return r.m.ChangeLimits(ctx, b.Name, b.Limits.Contract(), b.UnsetFields())
	}),
	messages.OpSnapshotCreate: on(func(ctx context.Context, r *busRequest, b *messages.SnapshotRequest) (any, error) {
		return r.m.CreateSnapshot(ctx, b.Name, b.Snapshot)
	}),
	messages.OpSnapshotRestore: on(func(ctx context.Context, r *busRequest, b *messages.SnapshotRequest) (any, error) {
		return messages.ChangedResult{Changed: true}, r.m.RestoreSnapshot(ctx, b.Name, b.Snapshot)
	}),
	messages.OpSnapshotList: on(func(ctx context.Context, r *busRequest, b *messages.NameRequest) (any, error) {
		return nonNil(r.m.ListSnapshots(ctx, b.Name))
	}),
	messages.OpSnapshotDelete: on(func(ctx context.Context, r *busRequest, b *messages.SnapshotRequest) (any, error) {
		return messages.ChangedResult{Changed: true}, r.m.DeleteSnapshot(ctx, b.Name, b.Snapshot)
	}),
	messages.OpClone: on(func(ctx context.Context, r *busRequest, b *messages.CloneRequest) (any, error) {
		return r.m.Clone(ctx, b.Source, b.Target)
	}),
	messages.OpNetworkAttach: on(func(ctx context.Context, r *busRequest, b *messages.NetworkAttachRequest) (any, error) {
		changed, err := r.m.AttachNetwork(ctx, b.Name, b.Network.Contract())
		return messages.ChangedResult{Changed: changed}, err
	}),
	messages.OpNetworkDetach: on(func(ctx context.Context, r *busRequest, b *messages.NetworkDetachRequest) (any, error) {
		return messages.ChangedResult{Changed: true}, r.m.DetachNetwork(ctx, b.Name, b.Network)
	}),
	messages.OpNetworkList: on(func(ctx context.Context, r *busRequest, _ *messages.EmptyRequest) (any, error) {
		return nonNil(r.m.ListNetworks(ctx))
	}),
	messages.OpCancel: on(func(ctx context.Context, r *busRequest, b *messages.CancelRequest) (any, error) {
		return r.w.cancelOp(ctx, r.m.Driver(), b.ID, r.requestID)
	}),
}

// longOpsList names the ops that accept messages.HeaderNoWait, for errors.
var longOpsList = func() string {
	names := messages.OpNames(messages.LongOps())
	return strings.Join(names, ", ")
}()

// on adapts a handler of one request type. A body of another type (a
// mismatch between the op table and handlers, which a test rules out) is
// internal, never a panic.
func on[B any](fn func(ctx context.Context, r *busRequest, body *B) (any, error)) handler {
	return handler{body: reflect.TypeFor[*B](), serve: func(ctx context.Context, r *busRequest, body any) (any, error) {
		b, ok := body.(*B)
		if !ok {
			return nil, drivers.Errorf(drivers.Internal, "%s: no handler for %T", r.op, body)
		}
		return fn(ctx, r, b)
	}}
}

// nonNil makes an empty list encode as [] rather than null.
func nonNil[T any](l []T, err error) (any, error) {
	if l == nil {
		l = []T{}
	}
	return l, err
}

// dispatch runs a decoded, non-streamed request through its op's handler
// and converts the manager's result (contract types) to its wire form:
// the one place replies are converted. A no-wait request of a long op is
// accepted as a background operation instead (ops.go): its result is the
// operation.
func (r *busRequest) dispatch(ctx context.Context, body any) (any, error) {
	if r.noWait {
		return r.startOp(body)
	}
	return r.serveOp(ctx, body)
}

// serveOp serves the request through its op's handler, under the lease of
// a cluster-wide instance, and updates the inventory after a mutation.
func (r *busRequest) serveOp(ctx context.Context, body any) (any, error) {
	h, ok := handlers[r.op]
	if !ok {
		return nil, drivers.Errorf(drivers.Internal, "%s: no handler", r.op)
	}
	if r.m.ClusterWide() && r.op.Mutating() && r.op != messages.OpExec && r.instance != "" {
		opCtx, release, err := r.w.acquireLease(ctx, r.m.Driver(), r.instance, r.op, r.requestID)
		if err != nil {
			return nil, err
		}
		defer release()
		res, err := h.serve(opCtx, r, body)
		if err != nil && errors.Is(context.Cause(opCtx), errLeaseLost) {
			err = drivers.Wrap(drivers.Unavailable, errLeaseLost, "instance "+r.instance+": this worker could not renew its lease, so it stopped the operation (its effect may be partial: get the instance)")
		}
		return r.wire(res), err
	}
	res, err := h.serve(ctx, r, body)
	if err == nil && r.op.Mutating() {
		r.w.recordAfter(ctx, r.m, r.op, r.instance, res)
	}
	return r.wire(res), err
}

// wire converts a contract value to its wire form, stamping this
// request's driver and host.
func (r *busRequest) wire(v any) any { return messages.ToWire(v, r.m.Driver(), r.w.host) }

// changed builds the result of start/stop/restart: whether anything
// changed, and the instance as it is now (best effort).
func (r *busRequest) changed(ctx context.Context, name string, changed bool, err error) (any, error) {
	if err != nil {
		return nil, err
	}
	res := messages.ChangedResult{Changed: changed}
	if inst, err := r.m.Get(ctx, name); err == nil {
		w := messages.InstanceFrom(inst, r.m.Driver(), r.w.host)
		res.Instance = &w
	}
	return res, nil
}
