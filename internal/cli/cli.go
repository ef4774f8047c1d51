// Package cli implements the subbus command line. Run is the whole
// program minus the process: cmd/subbus calls it with os.Args, tests call
// it in-process with their own writers. docs/cli.md is the reference.
package cli

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/mattn/go-isatty"
	"github.com/nats-io/nats.go"

	"github.com/subbus/subbus/client"
	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/internal/natsconn"
	"github.com/subbus/subbus/messages"
)

// Exit statuses. Every error code has its own; see docs/cli.md.
const (
	ExitOK               = 0
	ExitInternal         = 1
	ExitUsage            = 2
	ExitInvalidArgument  = 3
	ExitNotFound         = 4
	ExitAlreadyExists    = 5
	ExitConflict         = 6
	ExitPermissionDenied = 7
	ExitUnsupported      = 8
	ExitUnavailable      = 9
	ExitTimeout          = 10
	ExitExited           = 13
	ExitNoWorker         = 11
	ExitNoReply          = 12
	// ExitExecFailed: exec could not run the command or report its status
	// (the error line on stderr has the code); otherwise exec exits with
	// the command's own status.
	ExitExecFailed  = 125
	ExitInterrupted = 130
)

// usageError is a command-line mistake: exit status 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return &usageError{fmt.Sprintf(format, args...)} }

// exitError carries an exit status decided by the command (exec).
type exitError struct{ code int }

func (e *exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

// ErrorName returns the code name printed for err ("not_found",
// "no_worker", "no_reply", "usage"…).
func ErrorName(err error) string {
	var ue *usageError
	var nw *client.NoWorkerError
	var te *client.TimeoutError
	switch {
	case errors.As(err, &ue):
		return "usage"
	case errors.As(err, &nw):
		return "no_worker"
	case errors.As(err, &te):
		return "no_reply"
	case errors.Is(err, context.Canceled):
		return "interrupted"
	}
	return drivers.CodeOf(err).String()
}

// ExitStatus returns the exit status for err (0 for nil).
func ExitStatus(err error) int {
	if err == nil {
		return ExitOK
	}
	var xe *exitError
	if errors.As(err, &xe) {
		return xe.code
	}
	if errors.Is(err, context.Canceled) {
		return ExitInterrupted
	}
	var ee *execError
	if errors.As(err, &ee) {
		return ExitExecFailed
	}
	switch ErrorName(err) {
	case "usage":
		return ExitUsage
	case "no_worker":
		return ExitNoWorker
	case "no_reply":
		return ExitNoReply
	case "interrupted":
		return ExitInterrupted
	}
	return drivers.CodeOf(err).Exit() // the code table (drivers.CodeTable)
}

// env is what a command runs with.
type env struct {
	ctx     context.Context
	stdout  io.Writer
	stderr  io.Writer
	json    bool
	conn    natsconn.Options
	timeout time.Duration // --timeout; 0 = the command's default
	// timeoutFlag parses --timeout (plain numbers are seconds).
	timeoutFlag durationFlag
	nc          *nats.Conn
	cl          *client.Client
	terminal    bool // stderr is a terminal: show progress
}

// client connects on first use.
func (e *env) client() (*client.Client, error) {
	if e.cl != nil {
		return e.cl, nil
	}
	nc, err := e.conn.Connect("subbus")
	var na *natsconn.NotAuthorizedError
	if errors.As(err, &na) {
		return nil, drivers.Wrap(drivers.PermissionDenied, err, "")
	}
	if err != nil {
		return nil, drivers.Wrap(drivers.Unavailable, err, "cannot reach NATS")
	}
	e.nc = nc
	e.cl = client.New(nc, client.DefaultTimeout)
	return e.cl, nil
}

// reqCtx bounds one request: --timeout, else def.
func (e *env) reqCtx(def time.Duration) (context.Context, context.CancelFunc) {
	d := def
	if e.timeout > 0 {
		d = e.timeout
	}
	return context.WithTimeout(e.ctx, d)
}

// printJSON writes v as indented JSON.
func (e *env) printJSON(v any) error {
	enc := json.NewEncoder(e.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// table returns a tabwriter on stdout; the caller flushes it.
func (e *env) table() *tabwriter.Writer {
	return tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
}

// Run runs subbus with args (without the program name) and returns the
// exit status. Errors are printed to stderr as "error: <code>: <message>";
// with --json they are printed to stdout as {"error": {"code", "message",
// "retryable"}} instead (docs/cli.md "Errors").
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	// stderr is shared with the connection's handlers (events --follow).
	e := &env{ctx: ctx, stdout: stdout, stderr: &lockedWriter{w: stderr}}
	e.timeoutFlag.d = &e.timeout
	if f, ok := stderr.(*os.File); ok {
		e.terminal = isatty.IsTerminal(f.Fd())
	}
	err := run(e, args)
	if e.nc != nil {
		e.nc.SetDisconnectErrHandler(nil) // a normal close is no lost connection
		e.nc.SetReconnectHandler(nil)
		e.nc.Close()
	}
	if err == nil {
		return ExitOK
	}
	var xe *exitError
	var se *silentError
	if !errors.As(err, &xe) && !errors.As(err, &se) {
		if e.json || wantsJSON(args) {
			_ = jsonLine(stdout, errorJSON(err))
		} else {
			fmt.Fprintf(e.stderr, "error: %s: %s\n", ErrorName(err), oneLine(err.Error()))
		}
	}
	return ExitStatus(err)
}

// lockedWriter serializes writes from several goroutines.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// jsonError is the --json form of an error, the wire's error shape.
type jsonError struct {
	Error jsonErrorInfo `json:"error"`
}

type jsonErrorInfo struct {
	Code      string `json:"code"`
	Message   string `json:"message"`
	Retryable bool   `json:"retryable"`
}

func errorJSON(err error) jsonError {
	name := ErrorName(err)
	retry := false
	switch name {
	case "no_reply", "no_worker":
		retry = true
	case "usage", "interrupted":
	default:
		retry = drivers.CodeOf(err).Retryable()
	}
	return jsonError{jsonErrorInfo{Code: name, Message: oneLine(err.Error()), Retryable: retry}}
}

// wantsJSON reports whether args ask for --json before any "--" (for
// errors found before the flags were parsed).
func wantsJSON(args []string) bool {
	for _, a := range args {
		switch a {
		case "--":
			return false
		case "--json", "-json", "-j", "--json=true", "-json=true", "-j=true":
			return true
		}
	}
	return false
}

func oneLine(s string) string { return strings.ReplaceAll(strings.TrimSpace(s), "\n", " ") }

// run finds the command, parses its flags and runs it.
func run(e *env, args []string) error {
	if len(args) > 0 && args[0] == "__complete" {
		return cmdComplete(e, args[1:])
	}
	words, rest := splitWords(args)
	if len(words) == 0 {
		switch {
		case hasFlag(rest, "version"):
			e.json = wantsJSON(args)
			return cmdVersion(e, nil)
		case hasHelpFlag(rest):
			printOverview(e.stdout)
			return nil
		}
		printOverview(e.stderr)
		return usagef("no command given")
	}
	if words[0] == "help" {
		return helpFor(e, words[1:])
	}
	if hasHelpFlag(rest) {
		return helpFor(e, helpWords(words))
	}
	c, pos, driver, err := findCommand(words)
	if err != nil {
		return err
	}

	o := newOpts()
	fs := flag.NewFlagSet("subbus "+c.name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	e.conn = natsconn.FromEnv()
	e.conn.RegisterFlags(fs)
	globalFlags(fs, e)
	for _, name := range c.flags {
		flagDefs[name](fs, o)
	}
	where := c.name
	if !c.top {
		where = driver + " " + c.name
	}
	if err := checkFlags(fs, rest, where); err != nil {
		return err
	}
	if err := fs.Parse(rest); err != nil {
		return usagef("%s: %s", c.name, gnuFlags(err.Error()))
	}
	trailing := fs.Args() // after "--"
	if len(pos) < c.minArgs || (c.maxArgs >= 0 && len(pos) > c.maxArgs) {
		return usagef("%s: usage: subbus %s; run 'subbus help %s'", c.name, c.usage, c.name)
	}
	if len(trailing) > 0 && !c.trailing {
		return usagef("%s: unexpected arguments after --: %s", c.name, strings.Join(trailing, " "))
	}
	if err := o.check(); err != nil {
		return err
	}
	if err := checkDriver(e, driver); err != nil {
		return err
	}
	return c.run(e, &invocation{cmd: c.name, op: c.op, driver: driver, args: pos, trailing: trailing, o: o})
}

// helpWords drops the arguments after the command words of a command
// line that asked for --help ("process create web --help" → "process
// create").
func helpWords(words []string) []string {
	c, pos, _, err := findCommand(words)
	if err != nil || c == nil {
		return words
	}
	return words[:len(words)-len(pos)]
}

// invocation is one parsed command line.
type invocation struct {
	cmd      string
	op       messages.Op // "" for top-level commands
	driver   string
	args     []string
	trailing []string // after --
	o        *opts
	filter   listFilter // list --state/--label
}

// splitWords separates the command words and positional arguments from
// the flags (which may come anywhere) and whatever follows "--".
func splitWords(args []string) (words, rest []string) {
	valued := valueFlags()
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			rest = append(rest, args[i:]...)
			break
		}
		if len(a) > 1 && a[0] == '-' {
			rest = append(rest, a)
			name := strings.TrimLeft(a, "-")
			if !strings.Contains(name, "=") && valued[name] && i+1 < len(args) {
				i++
				rest = append(rest, args[i])
			}
			continue
		}
		words = append(words, a)
	}
	return words, rest
}

func hasHelpFlag(rest []string) bool { return hasFlag(rest, "help") || hasFlag(rest, "h") }

// hasFlag reports whether rest has the boolean flag name before any "--".
func hasFlag(rest []string, name string) bool {
	for _, a := range rest {
		if a == "--" {
			return false
		}
		if a == "-"+name || a == "--"+name {
			return true
		}
	}
	return false
}

// valueFlags returns every flag name that takes a value.
func valueFlags() map[string]bool {
	fs := flag.NewFlagSet("all", flag.ContinueOnError)
	var c natsconn.Options
	c.RegisterFlags(fs)
	e := &env{}
	e.timeoutFlag.d = &e.timeout
	globalFlags(fs, e)
	sets := []*flag.FlagSet{fs}
	for _, def := range flagDefs { // one set each: two defs may share a name (--label)
		one := flag.NewFlagSet("one", flag.ContinueOnError)
		def(one, newOpts())
		sets = append(sets, one)
	}
	out := map[string]bool{}
	for _, s := range sets {
		s.VisitAll(func(f *flag.Flag) {
			if b, ok := f.Value.(interface{ IsBoolFlag() bool }); ok && b.IsBoolFlag() {
				return
			}
			out[f.Name] = true
		})
	}
	return out
}

// sortedKeys returns m's keys sorted.
func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
