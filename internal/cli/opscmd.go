package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"time"

	"github.com/subbus/subbus/client"
	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/messages"
)

// Long operations in the CLI (docs/cli.md "Long operations"):
//
//   - every command of a long op (messages.OpSpec.Long) takes --no-wait:
//     the worker accepts the op and runs it in the background, subbus
//     prints the operation id and how to follow it, and exits 0;
//   - without --no-wait the command waits as before and prints the same
//     progress the operation records, one line when the wait starts and
//     one when it ends, on stderr, terminal or not (not with --json);
//     interrupted, it says the worker keeps going and how to follow it;
//   - `subbus ops list|get|wait|cancel` follow operations by id.

func init() {
	flagDefs["no-wait"] = func(fs *flag.FlagSet, o *opts) {
		fs.BoolVar(&o.noWait, "no-wait", false, "return at once with an operation id; the worker goes on (follow: subbus ops wait ID)")
	}
	flagDefs["op-state"] = func(fs *flag.FlagSet, o *opts) {
		fs.StringVar(&o.opState, "state", "", "only operations in `STATE` (running, succeeded, failed, cancelled, lost)")
	}
}

// sendLong sends op for a command. For a long op: with --no-wait it
// begins the operation, prints it and returns an exit status 0 that stops
// the command; otherwise it waits for the reply into result, printing the
// start and end progress lines. Other ops are sent as they are.
func sendLong(ctx context.Context, e *env, c *invocation, cl *client.Client, op messages.Op, req, result any) error {
	if !op.Long() {
		return cl.Do(ctx, c.driver, c.o.host, op, req, result)
	}
	if c.o.noWait {
		o, err := cl.Begin(ctx, c.driver, c.o.host, op, req)
		if err != nil {
			return err
		}
		return printBegun(e, o)
	}
	show := !e.json
	start := time.Now()
	line := messages.ProgressStart(op, asPointer(req), 0)
	if show {
		fmt.Fprintf(e.stderr, "%s…\n", line)
	}
	err := cl.Do(ctx, c.driver, c.o.host, op, req, result)
	took := time.Since(start)
	clear := ""
	if e.terminal {
		clear = "\r\033[K" // the spinner's line
	}
	switch {
	case err == nil:
		if show {
			fmt.Fprintf(e.stderr, "%s%s\n", clear, messages.ProgressEnd(op, asPointer(req), 0, took, messages.OpSucceeded, nil))
		}
	case errors.Is(err, context.Canceled) && e.ctx.Err() != nil:
		inst := messages.InstanceName(asPointer(req))
		fmt.Fprintf(e.stderr, "%sinterrupted after %s: the worker keeps going with %s; follow it with:\n  subbus events --follow --instance %s\n  subbus %s get %s\n",
			clear, took.Round(100*time.Millisecond), line, inst, c.driver, inst)
	default:
		if show {
			fmt.Fprintf(e.stderr, "%sfailed after %s\n", clear, took.Round(100*time.Millisecond))
		}
	}
	return err
}

// asPointer gives the request as the pointer Decode would have made, the
// form ProgressStart reads.
func asPointer(req any) any {
	switch r := req.(type) {
	case messages.StopRequest:
		return &r
	case messages.DeleteRequest:
		return &r
	case messages.CreateRequest:
		return &r
	case messages.CloneRequest:
		return &r
	case messages.SnapshotRequest:
		return &r
	case messages.NameRequest:
		return &r
	}
	return req
}

// printBegun prints an accepted operation and how to follow it.
func printBegun(e *env, o messages.Operation) error {
	if e.json {
		if err := e.printJSON(o); err != nil {
			return err
		}
		return &exitError{ExitOK}
	}
	fmt.Fprintf(e.stdout, "operation %s: %s (on host %s)\n", o.ID, o.Progress, o.Host)
	fmt.Fprintf(e.stdout, "follow it:  subbus ops wait %s\ncancel it:  subbus ops cancel %s\n", o.ID, o.ID)
	return &exitError{ExitOK}
}

func cmdOps(e *env, c *invocation) error {
	verb := c.args[0]
	id := ""
	if len(c.args) == 2 {
		id = c.args[1]
	}
	if verb == "list" {
		if id != "" {
			return usagef("ops list takes no argument")
		}
		return opsList(e, c)
	}
	if id == "" {
		return usagef("ops %s: give the operation id: subbus ops %s <id>", verb, verb)
	}
	cl, err := e.client()
	if err != nil {
		return err
	}
	switch verb {
	case "get":
		ctx, cancel := e.reqCtx(quickWait)
		defer cancel()
		o, err := cl.Op(ctx, id)
		if err != nil {
			return err
		}
		return printOp(e, o)
	case "wait":
		return opsWait(e, cl, id)
	case "cancel":
		ctx, cancel := e.reqCtx(quickWait)
		defer cancel()
		o, err := cl.Cancel(ctx, id)
		if err != nil {
			return err
		}
		return printCancelled(e, o)
	}
	return usagef("ops: unknown sub-command %q (list, get, wait, cancel)", verb)
}

// opState is what the CLI shows: lost for a running operation whose worker is not up.
func opState(o messages.Operation) string {
	if o.Lost {
		return "lost"
	}
	return string(o.State)
}

func opsList(e *env, c *invocation) error {
	cl, err := e.client()
	if err != nil {
		return err
	}
	f := client.OpFilter{Driver: c.o.eventDriver, Host: c.o.host, Instance: c.o.instance}
	switch st := c.o.opState; st {
	case "", "lost":
	case string(messages.OpRunning), string(messages.OpSucceeded), string(messages.OpFailed), string(messages.OpCancelled):
		f.State = messages.OpState(st)
	default:
		return usagef("--state: %q is not running, succeeded, failed, cancelled or lost", st)
	}
	if c.o.opState == "lost" {
		f.State = messages.OpRunning
	}
	ctx, cancel := e.reqCtx(quickWait)
	defer cancel()
	ops, err := cl.Ops(ctx, f)
	if err != nil {
		return err
	}
	kept := ops[:0]
	for _, o := range ops {
		if (c.o.eventType == "" || string(o.Op) == c.o.eventType) && (c.o.opState != "lost" || o.Lost) {
			kept = append(kept, o)
		}
	}
	if e.json {
		return e.printJSON(kept)
	}
	tw := e.table()
	fmt.Fprintln(tw, "ID\tOP\tINSTANCE\tDRIVER\tHOST\tSTATE\tSTARTED\tPROGRESS")
	for _, o := range kept {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", o.ID, o.Op, dash(o.Instance), o.Driver, o.Host, opState(o), age(o.Started), o.Progress)
	}
	return tw.Flush()
}

func printOp(e *env, o messages.Operation) error {
	if e.json {
		return e.printJSON(o)
	}
	tw := e.table()
	fmt.Fprintf(tw, "ID:\t%s\nOp:\t%s\nInstance:\t%s\nDriver:\t%s\nHost:\t%s\nState:\t%s\nProgress:\t%s\nRequest:\t%s\nStarted:\t%s (%s)\n",
		o.ID, o.Op, dash(o.Instance), o.Driver, o.Host, opState(o), o.Progress, o.RequestID,
		o.Started.Local().Format(time.RFC3339), age(o.Started))
	if !o.Ended.IsZero() {
		fmt.Fprintf(tw, "Ended:\t%s (took %s)\n", o.Ended.Local().Format(time.RFC3339), o.Ended.Sub(o.Started).Round(time.Millisecond))
	}
	if o.CancelRequested {
		fmt.Fprintf(tw, "Cancel:\trequested\n")
	}
	if o.Error != nil {
		fmt.Fprintf(tw, "Error:\t%s: %s\n", o.Error.Code, oneLine(o.Error.Message))
	}
	if len(o.Result) > 0 {
		fmt.Fprintf(tw, "Result:\t%s\n", oneLine(string(o.Result)))
	}
	return tw.Flush()
}

// opsWait prints every change of the operation until it ends; the exit
// status is the operation's (0 when it succeeded, else its error's code).
// --timeout bounds the wait (default: none).
func opsWait(e *env, cl *client.Client, id string) error {
	ctx := e.ctx
	if e.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, e.timeout)
		defer cancel()
	}
	o, err := cl.Wait(ctx, id, func(o messages.Operation) {
		if e.json {
			return
		}
		line := o.Progress
		if o.Lost {
			line = "lost: the worker of host " + o.Host + " is not up; no one will finish this operation"
		}
		fmt.Fprintf(e.stdout, "%s  %s\n", o.Updated.Local().Format("15:04:05.000"), line)
	})
	if ctx.Err() != nil && !o.State.Final() {
		fmt.Fprintf(e.stderr, "stopped waiting; operation %s goes on: subbus ops wait %s\n", id, id)
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return drivers.Errorf(drivers.Timeout, "operation %s still running after --timeout %s", id, e.timeout)
		}
		return err
	}
	if e.json && o.ID != "" {
		if perr := e.printJSON(o); perr != nil {
			return perr
		}
	}
	if err != nil && o.State.Final() {
		return &silentError{err} // its progress line said why
	}
	return err
}

// cmdOpCancel is `subbus <driver> op cancel <id>`: with --host the request
// goes to that host, else to the host of the operation's record.
func cmdOpCancel(e *env, c *invocation) error {
	cl, err := e.client()
	if err != nil {
		return err
	}
	ctx, cancel := e.reqCtx(quickWait)
	defer cancel()
	var o messages.Operation
	if c.o.host != "" {
		err = cl.Do(ctx, c.driver, c.o.host, messages.OpCancel, messages.CancelRequest{ID: c.args[0]}, &o)
	} else {
		o, err = cl.Cancel(ctx, c.args[0])
	}
	if err != nil {
		return err
	}
	return printCancelled(e, o)
}

func printCancelled(e *env, o messages.Operation) error {
	if e.json {
		return e.printJSON(o)
	}
	if o.State.Final() {
		fmt.Fprintf(e.stdout, "operation %s had already ended: %s (%s)\n", o.ID, o.State, o.Progress)
		return nil
	}
	fmt.Fprintf(e.stdout, "operation %s: cancel requested (%s of %s on host %s); see when it ends: subbus ops wait %s\n",
		o.ID, o.Op, dash(o.Instance), o.Host, o.ID)
	return nil
}
