package proxmox

import (
	"context"
	"strconv"
	"strings"
	"time"

	gp "github.com/luthermonson/go-proxmox"

	"github.com/subbus/subbus/internal/drivers"
)

// clusterTask is one entry of GET /cluster/tasks (recent tasks of every node).
type clusterTask struct {
	UPID      string `json:"upid"`
	Type      string `json:"type"`
	ID        string `json:"id"`
	User      string `json:"user"`
	Node      string `json:"node"`
	Status    string `json:"status"`
	EndTime   num    `json:"endtime"`
	StartTime num    `json:"starttime"`
}

// taskEvents maps the types of ended tasks to the events they are; the
// lifecycle (start, stop, create, destroy) comes from the resources diff.
var taskEvents = map[string]drivers.EventType{
	"qmsnapshot": drivers.EventSnapshotCreated, "vzsnapshot": drivers.EventSnapshotCreated,
	"qmdelsnapshot": drivers.EventSnapshotDeleted, "vzdelsnapshot": drivers.EventSnapshotDeleted,
	"qmrollback": drivers.EventSnapshotRestored, "vzrollback": drivers.EventSnapshotRestored,
	"qmreboot": drivers.EventRestarted, "vzreboot": drivers.EventRestarted,
}

// Watch emulates an event feed, as PVE has none: every
// event_poll_interval (default 2 s, the feed's latency) it reads
// /cluster/resources?type=vm and /cluster/tasks and emits the
// differences from the previous poll: Appeared/Vanished, Started/Stopped
// (StateChanged for other states), and for ended snapshot, rollback and
// reboot tasks their events (a failed task is EventFailed with its
// exitstatus). Guests are told apart by VMID, so a rename is a
// Vanished + Appeared. The first poll after the driver is made only
// records; later (re)connections emit what changed in between.
func (d *Driver) Watch(ctx context.Context, emit func(drivers.Event)) error {
	tick := time.NewTicker(time.Duration(d.opts.EventPollInterval))
	defer tick.Stop()
	// Each Watch keeps its own previous poll, so concurrent watchers all
	// see every change; it starts from the last poll of any earlier Watch.
	d.watchMu.Lock()
	prev := d.known
	d.watchMu.Unlock()
	var tasksSeen map[string]bool
	for {
		cur, err := d.pollResources(ctx, prev, emit)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		prev = cur
		seen, err := d.pollTasks(ctx, cur, tasksSeen, emit)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		tasksSeen = seen
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

// pollResources lists the guests and emits their differences from prev
// (nothing when prev is nil). It returns the guests by VMID and records
// them for the next Watch.
func (d *Driver) pollResources(ctx context.Context, prev map[int]resource, emit func(drivers.Event)) (map[int]resource, error) {
	list, err := d.resources(ctx)
	if err != nil {
		return nil, err
	}
	cur := make(map[int]resource, len(list))
	for _, r := range list {
		cur[r.vmid()] = r
	}
	d.watchMu.Lock()
	d.known = cur
	d.watchMu.Unlock()
	if prev == nil {
		return cur, nil
	}
	now := time.Now()
	ev := func(typ drivers.EventType, r resource, st drivers.State, details map[string]string) drivers.Event {
		det := map[string]string{metaVMID: strconv.Itoa(r.vmid()), metaKind: r.Type, metaNode: r.Node}
		for k, v := range details {
			det[k] = v
		}
		return drivers.Event{Type: typ, Time: now, Instance: r.displayName(), State: st, Details: det}
	}
	for id, r := range cur {
		old, ok := prev[id]
		switch {
		case !ok:
			emit(ev(drivers.EventAppeared, r, r.state(), nil))
		case old.displayName() != r.displayName():
			emit(ev(drivers.EventVanished, old, "", map[string]string{"new_name": r.displayName()}))
			emit(ev(drivers.EventAppeared, r, r.state(), map[string]string{"old_name": old.displayName()}))
		case old.state() != r.state():
			typ := drivers.EventStateChanged
			switch r.state() {
			case drivers.StateRunning:
				if old.state() == drivers.StateStopped {
					typ = drivers.EventStarted
				}
			case drivers.StateStopped:
				typ = drivers.EventStopped
			}
			emit(ev(typ, r, r.state(), map[string]string{"status": r.Status, "previous": old.Status}))
		}
	}
	for id, r := range prev {
		if _, ok := cur[id]; !ok {
			emit(ev(drivers.EventVanished, r, "", nil))
		}
	}
	return cur, nil
}

// pollTasks emits events for guest tasks that ended since the previous
// poll; seen nil (the first poll) only records.
func (d *Driver) pollTasks(ctx context.Context, known map[int]resource, seen map[string]bool, emit func(drivers.Event)) (map[string]bool, error) {
	c, err := d.client()
	if err != nil {
		return nil, err
	}
	var tasks []clusterTask
	if err := c.Get(ctx, "/cluster/tasks", &tasks); err != nil {
		return nil, err
	}
	next := make(map[string]bool, len(tasks))
	for _, t := range tasks {
		if t.EndTime == 0 && t.Status == "" {
			continue // still running: reported once it ends
		}
		next[t.UPID] = true
		if seen == nil || seen[t.UPID] {
			continue
		}
		vmid, err := strconv.Atoi(t.ID)
		if err != nil {
			continue
		}
		typ, isGuestTask := taskEvents[t.Type]
		failed := t.Status != "" && t.Status != "OK" && !strings.HasPrefix(t.Status, "WARNINGS")
		if !isGuestTask && !failed {
			continue
		}
		name := t.ID
		if r, ok := known[vmid]; ok {
			name = r.displayName()
		}
		e := drivers.Event{Type: typ, Time: time.Unix(int64(t.EndTime), 0), Instance: name,
			Details: map[string]string{"task": t.Type, "upid": t.UPID, "user": t.User, "exitstatus": t.Status, metaVMID: t.ID}}
		if e.Time.Unix() <= 0 {
			e.Time = time.Now()
		}
		if failed {
			// The failure's code, as ErrorCode classifies the same task.
			e.Type = drivers.EventFailed
			e.Details["code"] = classify(&gp.TaskFailedError{UPID: gp.UPID(t.UPID), Type: t.Type, ID: t.ID, ExitStatus: t.Status}).String()
		}
		emit(e)
	}
	return next, nil
}
