package proxmox

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	gp "github.com/luthermonson/go-proxmox"
)

// maxTaskWait bounds a wait on a task when the caller's ctx has no
// deadline (the manager always gives one).
const maxTaskWait = time.Hour

// async sends a request that PVE answers with a UPID, then waits for the
// task under ctx. The task's exitstatus decides: OK and WARNINGS: n are
// success, anything else is a *gp.TaskFailedError carrying the text.
// what names the operation in errors.
func (d *Driver) async(ctx context.Context, method, path string, params map[string]any, what string) error {
	upid, err := d.startTask(ctx, method, path, params)
	if err != nil {
		return fmt.Errorf("proxmox: %s: %w", what, err)
	}
	if err := d.wait(ctx, upid); err != nil {
		return fmt.Errorf("proxmox: %s: %w", what, err)
	}
	return nil
}

// startTask sends the request and returns the UPID PVE answered.
func (d *Driver) startTask(ctx context.Context, method, path string, params map[string]any) (gp.UPID, error) {
	c, err := d.client()
	if err != nil {
		return "", err
	}
	var upid gp.UPID
	switch method {
	case "POST":
		err = c.Post(ctx, path, params, &upid)
	case "DELETE":
		err = c.Delete(ctx, path+query(params), &upid)
	default:
		return "", fmt.Errorf("startTask: method %s", method)
	}
	if err != nil {
		return "", err
	}
	if !strings.HasPrefix(string(upid), "UPID:") {
		return "", fmt.Errorf("%s %s answered %q, not a UPID", method, path, upid)
	}
	return upid, nil
}

// wait waits for a task to end under ctx. When ctx is cancelled (an
// operation cancelled by its caller, a worker shutting down) the task is
// stopped on PVE (DELETE /nodes/{node}/tasks/{upid}, as the web UI's Stop
// does) and ctx's error returned; when only ctx's deadline passes the task
// is left running, as before (the manager's time bound is not a request to
// undo work).
func (d *Driver) wait(ctx context.Context, upid gp.UPID) error {
	c, err := d.client()
	if err != nil {
		return err
	}
	t := gp.NewTask(upid, c)
	max := maxTaskWait
	if dl, ok := ctx.Deadline(); ok {
		max = time.Until(dl) + time.Second // ctx ends first
	}
	err = t.Wait(ctx, time.Duration(d.opts.TaskPollInterval), max)
	if err != nil && errors.Is(ctx.Err(), context.Canceled) {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		if serr := t.Stop(sctx); serr != nil {
			return fmt.Errorf("%w (stopping task %s: %v)", err, upid, serr)
		}
	}
	return err
}

// query encodes DELETE parameters (PVE reads them from the query string).
// Booleans go as 0/1, the only spelling PVE accepts besides JSON.
func query(params map[string]any) string {
	if len(params) == 0 {
		return ""
	}
	v := url.Values{}
	for k, x := range params {
		switch b := x.(type) {
		case bool:
			if b {
				v.Set(k, "1")
			} else {
				v.Set(k, "0")
			}
		default:
			v.Set(k, fmt.Sprint(x))
		}
	}
	return "?" + v.Encode()
}
