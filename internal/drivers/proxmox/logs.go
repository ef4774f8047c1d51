package proxmox

import (
	"context"
	"fmt"
	"net/url"
	"slices"
	"sort"
	"time"

	gp "github.com/luthermonson/go-proxmox"

	"github.com/subbus/subbus/internal/drivers"
)

// maxLogTasks bounds how many of a guest's recent tasks Logs reads.
const maxLogTasks = 50

// taskEntry is one entry of GET /nodes/{node}/tasks.
type taskEntry struct {
	UPID      string `json:"upid"`
	Type      string `json:"type"`
	ID        string `json:"id"`
	User      string `json:"user"`
	Status    string `json:"status"` // the exitstatus once ended; empty while running
	StartTime num    `json:"starttime"`
	EndTime   num    `json:"endtime"`
	Node      string `json:"node"`
}

// logEntry is one line of GET …/tasks/{upid}/log.
type logEntry struct {
	N num    `json:"n"`
	T string `json:"t"`
}

// LogFormat: task lines are in task order, each with its task's start
// time (PVE's task log has no time per line; seconds).
func (d *Driver) LogFormat() drivers.LogFormat { return drivers.LogFormat{Times: true, Ordered: true} }

// Logs emits the log lines of the guest's recent PVE tasks (start,
// shutdown, snapshot, clone, …), oldest first, as "<task type>: <line>"
// with Stream "task" and the task's start time: what happened to the
// guest and why it failed. PVE has no API for a guest's own console
// output (only interactive terminal websockets), so this is not the
// guest's stdout. Follow polls the task list every log_poll_interval.
func (d *Driver) Logs(ctx context.Context, name string, opts drivers.LogOptions, emit func(drivers.LogLine) error) error {
	r, err := d.find(ctx, name)
	if err != nil {
		return err
	}
	seen := map[string]int{} // UPID → lines emitted
	var tail []drivers.LogLine
	tasks, err := d.guestTasks(ctx, r)
	if err != nil {
		return err
	}
	for _, t := range tasks {
		lines, err := d.taskLog(ctx, r.Node, t, 0)
		if err != nil {
			return err
		}
		tail = append(tail, lines...)
		seen[t.UPID] = len(lines)
	}
	if len(tail) > opts.Lines {
		tail = tail[len(tail)-opts.Lines:]
	}
	for _, l := range tail {
		if err := emit(l); err != nil {
			return err
		}
	}
	if !opts.Follow {
		return nil
	}
	tick := time.NewTicker(time.Duration(d.opts.LogPollInterval))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		tasks, err := d.guestTasks(ctx, r)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		for _, t := range tasks {
			lines, err := d.taskLog(ctx, r.Node, t, seen[t.UPID])
			if err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return err
			}
			seen[t.UPID] += len(lines)
			for _, l := range lines {
				if err := emit(l); err != nil {
					return err
				}
			}
		}
	}
}

// guestTasks lists the guest's recent tasks on its node, oldest first.
func (d *Driver) guestTasks(ctx context.Context, r resource) ([]taskEntry, error) {
	c, err := d.client()
	if err != nil {
		return nil, err
	}
	var list []taskEntry
	path := fmt.Sprintf("/nodes/%s/tasks?vmid=%d&limit=%d&source=all", url.PathEscape(r.Node), r.vmid(), maxLogTasks)
	if err := c.Get(ctx, path, &list); err != nil {
		return nil, fmt.Errorf("proxmox: GET %s: %w", path, err)
	}
	// PVE lists the newest first; tasks started in the same second keep
	// that order reversed.
	slices.Reverse(list)
	sort.SliceStable(list, func(i, j int) bool { return list[i].StartTime < list[j].StartTime })
	return list, nil
}

// taskLog reads a task's log from line start (0-based).
func (d *Driver) taskLog(ctx context.Context, node string, t taskEntry, start int) ([]drivers.LogLine, error) {
	c, err := d.client()
	if err != nil {
		return nil, err
	}
	var entries []logEntry
	path := fmt.Sprintf("/nodes/%s/tasks/%s/log?start=%d&limit=%d", url.PathEscape(node), url.PathEscape(t.UPID), start, 10000)
	if err := c.Get(ctx, path, &entries); err != nil {
		if gp.IsNotFound(err) {
			return nil, nil // the task's log was rotated away
		}
		return nil, fmt.Errorf("proxmox: GET task log %s: %w", t.UPID, err)
	}
	if len(entries) == 1 && entries[0].T == "no content" {
		return nil, nil // PVE's answer for an empty range
	}
	at := time.Unix(int64(t.StartTime), 0).UTC()
	out := make([]drivers.LogLine, 0, len(entries))
	for _, e := range entries {
		out = append(out, drivers.LogLine{Time: at, Stream: "task", Line: t.Type + ": " + e.T})
	}
	return out, nil
}
