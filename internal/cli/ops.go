package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/subbus/subbus/client"
	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/messages"
)

// Default waits per kind of command (--timeout overrides).
const (
	quickWait = 30 * time.Second
	longWait  = 5 * time.Minute // create, clone, snapshot
	stopGrace = 30 * time.Second
)

// silentError carries a status for an error already reported.
type silentError struct{ err error }

func (e *silentError) Error() string { return e.err.Error() }
func (e *silentError) Unwrap() error { return e.err }

// execError: exec failed before or instead of reporting the command's
// status; exits ExitExecFailed.
type execError struct{ err error }

func (e *execError) Error() string { return e.err.Error() }
func (e *execError) Unwrap() error { return e.err }

// do sends one request for the call's driver and host.
func do(e *env, c *invocation, op messages.Op, req, result any, wait time.Duration) error {
	cl, err := e.client()
	if err != nil {
		return err
	}
	ctx, cancel := e.reqCtx(wait)
	defer cancel()
	return sendLong(ctx, e, c, cl, op, req, result)
}

// progress shows a spinner with the elapsed time on a terminal until the
// returned function is called.
func (e *env) progress(label string) func() {
	if !e.terminal || e.json {
		return func() {}
	}
	start := time.Now()
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(120 * time.Millisecond)
		defer t.Stop()
		frames := `|/-\`
		for i := 0; ; i++ {
			select {
			case <-done:
				fmt.Fprint(e.stderr, "\r\033[K")
				return
			case <-t.C:
				fmt.Fprintf(e.stderr, "\r%c %s… %s", frames[i%len(frames)], label, time.Since(start).Round(time.Second))
			}
		}
	}()
	return func() { close(done); wg.Wait() }
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func age(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := time.Since(t)
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds ago", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm ago", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh ago", int(d.Hours()))
	}
	return fmt.Sprintf("%dd ago", int(d.Hours()/24))
}

// ---- list ----

// hostFailure is a host that did not answer a --all-hosts list.
type hostFailure struct {
	Host  string              `json:"host"`
	Error *messages.ErrorInfo `json:"error"`
	err   error
}

// allHostsResult is the --json shape of list --all-hosts.
type allHostsResult struct {
	Instances []messages.Instance `json:"instances"`
	Failed    []hostFailure       `json:"failed"`
}

// cmdList: with --host that host's list; --inventory the fleet inventory;
// otherwise every host serving the driver is asked (the fleet view, fresh),
// and --all-hosts only changes the JSON to {instances, failed}.
func cmdList(e *env, c *invocation) error {
	f, err := newListFilter(c.o)
	if err != nil {
		return err
	}
	c.filter = f
	switch {
	case c.o.inventory:
		return listInventory(e, c)
	case c.o.host == "":
		return listAllHosts(e, c)
	}
	var list []messages.Instance
	if err := do(e, c, messages.OpList, nil, &list, quickWait); err != nil {
		return err
	}
	list = c.filter.apply(list)
	if e.json {
		return e.printJSON(list)
	}
	printInstances(e, c, list)
	return nil
}

// listFilter keeps the instances list --state and --label ask for
// (filtered by subbus: every worker answers the whole list).
type listFilter struct {
	state  drivers.State
	labels map[string]string
}

func newListFilter(o *opts) (listFilter, error) {
	var f listFilter
	if o.state != "" {
		f.state = drivers.State(o.state)
		if !slices.Contains(drivers.States(), f.state) {
			var names []string
			for _, s := range drivers.States() {
				names = append(names, string(s))
			}
			return f, usagef("--state %q: want one of %s%s", o.state, strings.Join(names, ", "), didYouMean(o.state, names))
		}
	}
	var err error
	f.labels, err = parseKV("--label", o.labels)
	return f, err
}

func (f listFilter) keep(i messages.Instance) bool {
	if f.state != "" && i.State != f.state {
		return false
	}
	for k, v := range f.labels {
		if got, ok := i.Metadata[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// apply returns the instances to show (never nil: [] in JSON).
func (f listFilter) apply(list []messages.Instance) []messages.Instance {
	out := []messages.Instance{}
	for _, i := range list {
		if f.keep(i) {
			out = append(out, i)
		}
	}
	return out
}

// inventoryInstance is the --json shape of one record of list --inventory.
type inventoryInstance struct {
	messages.Instance
	ConfirmedAt time.Time `json:"confirmed_at"`
	Stale       bool      `json:"stale"`
}

// listInventory prints the fleet inventory of the driver; hosts whose
// worker is not up are reported on stderr and their records marked stale
// (exit 0: the records are there, only possibly out of date).
func listInventory(e *env, c *invocation) error {
	cl, err := e.client()
	if err != nil {
		return err
	}
	ctx, cancel := e.reqCtx(quickWait)
	defer cancel()
	recs, bad, err := cl.Inventory(ctx, c.driver)
	if err != nil {
		return err
	}
	out := []inventoryInstance{}
	for _, r := range recs {
		if inst := r.Instance(); c.filter.keep(inst) {
			out = append(out, inventoryInstance{Instance: inst, ConfirmedAt: r.ConfirmedAt, Stale: r.Stale})
		}
	}
	switch {
	case c.o.quiet && !e.json:
		for _, i := range out {
			fmt.Fprintln(e.stdout, i.Name)
		}
	case e.json:
		if err := e.printJSON(out); err != nil {
			return err
		}
	default:
		tw := e.table()
		fmt.Fprintln(tw, "NAME\tSTATE\tHOST\tIMAGE\tCREATED\tCONFIRMED")
		for _, i := range out {
			state := string(i.State)
			if i.Stale {
				state += " (stale)"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", i.Name, state, dash(i.Host), dash(i.Image), age(i.Created), age(i.ConfirmedAt))
		}
		_ = tw.Flush()
	}
	for _, h := range bad {
		seen := ""
		if !h.LastSeen.IsZero() {
			seen = ", last heartbeat " + age(h.LastSeen)
		}
		fmt.Fprintf(e.stderr, "warning: host %s: worker %s%s; its records may be out of date\n", h.Host, h.Liveness, seen)
	}
	return nil
}

func printInstances(e *env, c *invocation, list []messages.Instance) {
	if c.o.quiet {
		for _, i := range list {
			fmt.Fprintln(e.stdout, i.Name)
		}
		return
	}
	tw := e.table()
	fmt.Fprintln(tw, "NAME\tSTATE\tHOST\tIMAGE\tCREATED\tMANAGED")
	for _, i := range list {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%v\n", i.Name, i.State, dash(i.Host), dash(i.Image), age(i.Created), i.Managed)
	}
	_ = tw.Flush()
}

// listAllHosts asks each host serving the driver, in parallel, and reports
// the hosts that failed on stderr (and in the JSON of --all-hosts) instead
// of hiding them. The hosts are those found by discovery plus those with a
// heartbeat that are not down (a stale host is asked: if it does not
// answer it is reported).
func listAllHosts(e *env, c *invocation) error {
	cl, err := e.client()
	if err != nil {
		return err
	}
	hosts, lists, errs, hbs, err := fanOutList(e, cl, c.driver)
	if err != nil {
		return err
	}
	if len(hosts) == 0 {
		return &client.NoWorkerError{Driver: c.driver}
	}
	res := allHostsResult{Instances: []messages.Instance{}, Failed: []hostFailure{}}
	for i, h := range hosts {
		var nw *client.NoWorkerError
		if hb, ok := hbs[h]; ok && errors.As(errs[i], &nw) {
			// A host known by its heartbeat whose worker is gone.
			errs[i] = drivers.Errorf(drivers.Unavailable, "no worker answers on host %s (worker %s, last heartbeat %s)",
				h, hb.Liveness(time.Now()), age(hb.Time))
		}
		if errs[i] != nil {
			info := messages.InfoOf(errs[i])
			res.Failed = append(res.Failed, hostFailure{Host: h, Error: info, err: errs[i]})
			continue
		}
		for _, inst := range lists[i] {
			if inst.Host == "" {
				inst.Host = h
			}
			if c.filter.keep(inst) {
				res.Instances = append(res.Instances, inst)
			}
		}
	}
	switch {
	case e.json && c.o.allHosts:
		if err := e.printJSON(res); err != nil {
			return err
		}
	case e.json:
		if err := e.printJSON(res.Instances); err != nil {
			return err
		}
	default:
		printInstances(e, c, res.Instances)
	}
	for _, f := range res.Failed {
		fmt.Fprintf(e.stderr, "error: host %s: %s: %s\n", f.Host, ErrorName(f.err), oneLine(f.err.Error()))
	}
	if len(res.Failed) > 0 {
		return &silentError{res.Failed[0].err}
	}
	return nil
}

// errDiscoveryEnough ends a fan-out's discovery: every host known from
// its heartbeat has answered the list.
var errDiscoveryEnough = errors.New("the hosts with a heartbeat answered")

// fanOutList lists driver on every host serving it, in parallel, and
// returns the hosts (sorted) with each one's list or error. The hosts are
// those with a heartbeat that does not say the worker stopped, asked at
// once (a stale host is asked too: if it does not answer it is reported),
// plus those that answer discovery, asked as soon as discovery ends (a
// worker too new to have written a heartbeat, or a fleet without the
// bucket). Discovery runs alongside the requests; with heartbeats it ends
// when every host whose heartbeat is up has answered it, or at the latest
// client.DiscoveryGrace after the last list reply of the known hosts, so
// a fleet of 1,000 hosts is not listed at the pace of its slowest
// discovery reply (docs/fleet.md, docs/benchmarks.md).
func fanOutList(e *env, cl *client.Client, driver string) ([]string, [][]messages.Instance, []error, map[string]messages.WorkerHeartbeat, error) {
	hctx, cancel := context.WithTimeout(e.ctx, 3*time.Second)
	hbs, _ := cl.Heartbeats(hctx) // no bucket: discovery alone
	cancel()
	now := time.Now()
	var known, expect []string
	for _, hb := range hbs {
		if !hb.Serves(driver) {
			continue
		}
		switch hb.Liveness(now) {
		case messages.LivenessUp:
			expect = append(expect, hb.Host)
			known = append(known, hb.Host)
		case messages.LivenessStale:
			known = append(known, hb.Host)
		}
	}

	type result struct {
		list []messages.Instance
		err  error
	}
	var (
		mu      sync.Mutex
		results = map[string]*result{}
		all     sync.WaitGroup
	)
	ask := func(h string, wg *sync.WaitGroup) {
		mu.Lock()
		defer mu.Unlock()
		if h == "" || results[h] != nil {
			return
		}
		r := &result{}
		results[h] = r
		all.Add(1)
		if wg != nil {
			wg.Add(1)
		}
		go func() {
			defer all.Done()
			if wg != nil {
				defer wg.Done()
			}
			ctx, cancel := e.reqCtx(quickWait)
			defer cancel()
			r.err = cl.Do(ctx, driver, h, messages.OpList, nil, &r.list)
		}()
	}
	var knownDone sync.WaitGroup
	for _, h := range known {
		ask(h, &knownDone)
	}

	dctx, stop := context.WithCancelCause(e.ctx)
	defer stop(nil)
	dctx, cancel = context.WithTimeout(dctx, 3*time.Second)
	defer cancel()
	var (
		workers []client.Worker
		derr    error
	)
	discovered := make(chan struct{})
	go func() {
		defer close(discovered)
		if len(expect) > 0 {
			workers, derr = cl.WorkersExpecting(dctx, expect)
		} else {
			workers, derr = cl.Workers(dctx)
		}
	}()
	if len(known) > 0 {
		go func() {
			knownDone.Wait()
			select {
			case <-time.After(client.DiscoveryGrace):
				stop(errDiscoveryEnough)
			case <-discovered:
			}
		}()
	}
	<-discovered
	if derr != nil {
		all.Wait()
		return nil, nil, nil, nil, derr
	}
	for _, w := range workers {
		if slices.Contains(w.Drivers, driver) {
			ask(w.Host, nil)
		}
	}
	all.Wait()
	hosts := make([]string, 0, len(results))
	for h := range results {
		hosts = append(hosts, h)
	}
	slices.Sort(hosts)
	lists := make([][]messages.Instance, len(hosts))
	errs := make([]error, len(hosts))
	for i, h := range hosts {
		lists[i], errs[i] = results[h].list, results[h].err
	}
	return hosts, lists, errs, hbs, nil
}

// ---- get, create, clone ----

func cmdGet(e *env, c *invocation) error {
	name := c.args[0]
	var inst messages.Instance
	if err := do(e, c, messages.OpGet, messages.NameRequest{Name: name}, &inst, quickWait); err != nil {
		return err
	}
	return printInstance(e, inst)
}

func printInstance(e *env, i messages.Instance) error {
	if e.json {
		return e.printJSON(i)
	}
	tw := e.table()
	fmt.Fprintf(tw, "Name:\t%s\nID:\t%s\nDriver:\t%s\nHost:\t%s\nState:\t%s\n", i.Name, dash(i.ID), dash(i.Driver), dash(i.Host), stateText(i))
	if i.PID > 0 {
		fmt.Fprintf(tw, "PID:\t%d\n", i.PID)
	}
	if i.ExitCode != nil {
		fmt.Fprintf(tw, "Exit code:\t%d\n", *i.ExitCode)
	}
	fmt.Fprintf(tw, "Image:\t%s\n", dash(i.Image))
	if len(i.Command) > 0 {
		fmt.Fprintf(tw, "Command:\t%s\n", shellQuote(i.Command))
	}
	if i.WorkDir != "" {
		fmt.Fprintf(tw, "Workdir:\t%s\n", i.WorkDir)
	}
	if i.User != "" {
		fmt.Fprintf(tw, "User:\t%s\n", i.User)
	}
	fmt.Fprintf(tw, "Created:\t%s\n", timeText(i.Created))
	if !i.StartedAt.IsZero() {
		fmt.Fprintf(tw, "Started:\t%s\n", timeText(i.StartedAt))
	}
	fmt.Fprintf(tw, "Managed:\t%v\n", i.Managed)
	if !i.Limits.IsZero() {
		fmt.Fprintf(tw, "Limits:\t%s\n", limitsText(i.Limits))
	}
	for _, n := range i.Networks {
		fmt.Fprintf(tw, "Network:\t%s %s\n", n.NetworkName, dash(n.IPAddress))
	}
	for _, v := range i.Volumes {
		mode := ""
		if v.ReadOnly {
			mode = " (read-only)"
		}
		fmt.Fprintf(tw, "Volume:\t%s -> %s%s\n", v.Source, v.Target, mode)
	}
	for _, k := range sortedKeys(i.Environment) {
		fmt.Fprintf(tw, "Env:\t%s=%s\n", k, i.Environment[k])
	}
	for _, k := range sortedKeys(i.Metadata) {
		fmt.Fprintf(tw, "Label:\t%s=%s\n", k, i.Metadata[k])
	}
	return tw.Flush()
}

// stateText is the one state text of an instance: the portable state,
// and the substrate's own word in parentheses when it says more
// ("running", "stopped (exited)", "running (healthy)").
func stateText(i messages.Instance) string {
	state := string(i.State)
	native := strings.TrimSpace(i.NativeState)
	if native == "" || strings.EqualFold(native, state) {
		return state
	}
	if rest, ok := strings.CutPrefix(strings.ToLower(native), state+" "); ok {
		return state + " " + strings.TrimSpace(native[len(native)-len(rest):])
	}
	return state + " (" + native + ")"
}

func timeText(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.Local().Format(time.RFC3339) + " (" + age(t) + ")"
}

// shellQuote prints an argv as a shell would read it back.
func shellQuote(argv []string) string {
	out := make([]string, len(argv))
	for i, a := range argv {
		if a != "" && strings.IndexFunc(a, func(r rune) bool {
			return !(r == '/' || r == '-' || r == '_' || r == '.' || r == '=' || r == ':' || r == ',' || r == '+' || r == '@' ||
				(r >= '0' && r <= '9') || (r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z'))
		}) < 0 {
			out[i] = a
			continue
		}
		out[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
	}
	return strings.Join(out, " ")
}

func limitsText(l messages.ResourceLimits) string {
	var parts []string
	if l.CPUCores > 0 {
		parts = append(parts, fmt.Sprintf("cpu=%g", l.CPUCores))
	}
	if l.MemoryMB > 0 {
		parts = append(parts, fmt.Sprintf("memory=%dMiB", l.MemoryMB))
	}
	if l.DiskGB > 0 {
		parts = append(parts, fmt.Sprintf("disk=%gGiB", l.DiskGB))
	}
	if l.PIDs > 0 {
		parts = append(parts, fmt.Sprintf("pids=%d", l.PIDs))
	}
	if l.NetworkMbps > 0 {
		parts = append(parts, fmt.Sprintf("network=%gMbps", l.NetworkMbps))
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, " ")
}

func cmdCreate(e *env, c *invocation) error {
	t, err := buildTemplate(c)
	if err != nil {
		return err
	}
	stop := e.progress("creating " + t.Name)
	var inst messages.Instance
	err = do(e, c, messages.OpCreate, messages.CreateRequest{Template: t}, &inst, longWait)
	stop()
	if err != nil {
		return err
	}
	return printInstance(e, inst)
}

// buildTemplate builds the template from -f or from the flags.
func buildTemplate(c *invocation) (messages.Template, error) {
	o := c.o
	var t messages.Template
	if o.file != "" {
		if o.image != "" || len(o.env) > 0 || len(o.volumes) > 0 || len(o.networks) > 0 || len(o.labels) > 0 ||
			o.workdir != "" || o.user != "" || o.cpu.set || o.memory.set || o.disk.set || o.pids.set || len(c.trailing) > 0 {
			return t, usagef("create: -f takes the whole template; give only an optional name with it")
		}
		var err error
		if t, err = readTemplate(o.file); err != nil {
			return t, err
		}
		if len(c.args) == 1 {
			t.Name = c.args[0]
		}
	} else {
		if len(c.args) != 1 {
			return t, usagef("create: usage: subbus <driver> create <name> --image IMAGE … (or -f template.yaml)")
		}
		if o.image == "" && len(c.trailing) == 0 {
			return t, usagef("create: --image is required (process and supervisor: --image or -- COMMAND ARG...)")
		}
		// One rule on every driver (docs/cli.md): the words after -- are
		// the whole command, program first.
		command := c.trailing
		limits, unset := o.limits()
		if len(unset) > 0 {
			return t, usagef("create: %q removes a limit (limits set); at create, leave the flag out", noneWord)
		}
		t = messages.Template{
			Name: c.args[0], BaseImage: o.image, Command: command, WorkDir: o.workdir, User: o.user,
			Resources: limits,
		}
		var err error
		if t.Environment, err = parseKV("--env", o.env); err != nil {
			return t, err
		}
		if t.Metadata, err = parseKV("--label", o.labels); err != nil {
			return t, err
		}
		for _, v := range o.volumes {
			vol, err := parseVolume(v)
			if err != nil {
				return t, err
			}
			t.Volumes = append(t.Volumes, vol)
		}
		for _, n := range o.networks {
			nc, err := parseNetwork(n)
			if err != nil {
				return t, err
			}
			t.Networks = append(t.Networks, nc)
		}
	}
	return t, nil
}

// parseKV parses repeated K=V flags.
func parseKV(flagName string, list []string) (map[string]string, error) {
	if len(list) == 0 {
		return nil, nil
	}
	m := map[string]string{}
	for _, kv := range list {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, usagef("%s %q: want K=V", flagName, kv)
		}
		if strings.ContainsAny(k, " \t\n\x00") || strings.ContainsRune(v, 0) {
			return nil, drivers.Errorf(drivers.InvalidArgument, "%s %q: keys must not contain blanks, values no NUL bytes", flagName, k)
		}
		m[k] = v
	}
	return m, nil
}

// parseVolume parses SRC:DST[:ro|rw].
func parseVolume(s string) (messages.Volume, error) {
	parts := strings.Split(s, ":")
	if len(parts) < 2 || len(parts) > 3 || parts[0] == "" || parts[1] == "" {
		return messages.Volume{}, usagef("--volume %q: want SRC:DST[:ro]", s)
	}
	v := messages.Volume{Source: parts[0], Target: parts[1]}
	if len(parts) == 3 {
		switch parts[2] {
		case "ro":
			v.ReadOnly = true
		case "rw":
		default:
			return v, usagef("--volume %q: mode must be ro or rw", s)
		}
	}
	if strings.ContainsRune(s, 0) || !strings.HasPrefix(v.Target, "/") {
		return v, drivers.Errorf(drivers.InvalidArgument, "--volume %q: the target must be an absolute path", s)
	}
	return v, nil
}

// parseNetwork parses NAME[=IP].
func parseNetwork(s string) (messages.NetworkConfig, error) {
	name, ip, hasIP := strings.Cut(s, "=")
	if hasIP && net.ParseIP(ip) == nil {
		return messages.NetworkConfig{}, drivers.Errorf(drivers.InvalidArgument, "network %s: %q is not an IP address", name, ip)
	}
	return messages.NetworkConfig{NetworkName: name, IPAddress: ip}, nil
}

func cmdClone(e *env, c *invocation) error {
	src, dst := c.args[0], c.args[1]
	stop := e.progress("cloning " + src + " to " + dst)
	var inst messages.Instance
	err := do(e, c, messages.OpClone, messages.CloneRequest{Source: src, Target: dst}, &inst, longWait)
	stop()
	if err != nil {
		return err
	}
	return printInstance(e, inst)
}

// ---- start, stop, restart, delete ----

func cmdChange(e *env, c *invocation) error {
	name := c.args[0]
	var (
		op               messages.Op
		req              any
		doing, did, same string
		wait             = quickWait
	)
	switch c.op {
	case messages.OpStart:
		op, req = messages.OpStart, messages.NameRequest{Name: name}
		doing, did, same = "starting", "started", "already running"
	case messages.OpStop, messages.OpRestart:
		// --grace (-t, --time) is the graceful period; the request waits
		// for it plus quickWait, or --timeout when given. The old
		// spelling, --timeout alone, still means the grace period, with
		// a warning (docs/cli.md "stop").
		r := messages.StopRequest{Name: name, Force: c.o.force}
		grace, graceSet := stopGrace, c.o.graceFlag.set
		if graceSet {
			grace = c.o.grace
		} else if e.timeoutFlag.set {
			fmt.Fprintf(e.stderr, "warning: --timeout on %s is deprecated as the graceful stop period: use --grace %s "+
				"(with --grace given, --timeout is the reply wait, as on every other command)\n", c.op, e.timeout)
			grace, graceSet = e.timeout, true
			e.timeout = 0
		}
		if graceSet {
			if grace <= 0 && !c.o.force {
				return usagef("%s: --grace must be positive (or use --force)", c.op)
			}
			r.Timeout = grace.String()
		}
		wait = grace + quickWait
		op, req = c.op, r
		doing, did, same = "stopping", "stopped", "already stopped"
		if c.op == messages.OpRestart {
			doing, did, same = "restarting", "restarted", "restarted"
		}
	case messages.OpDelete:
		op, req = c.op, messages.DeleteRequest{Name: name, Force: c.o.force}
		doing, did, same = "deleting", "deleted", "already absent"
	}
	cl, err := e.client()
	if err != nil {
		return err
	}
	if e.timeout > 0 {
		wait = e.timeout
	}
	ctx, cancel := context.WithTimeout(e.ctx, wait)
	defer cancel()
	stop := e.progress(doing + " " + name)
	var res messages.ChangedResult
	err = sendLong(ctx, e, c, cl, op, req, &res)
	stop()
	if err != nil {
		return err
	}
	if e.json {
		return e.printJSON(res)
	}
	if res.Changed {
		fmt.Fprintf(e.stdout, "%s: %s\n", name, did)
	} else {
		fmt.Fprintf(e.stdout, "%s: %s\n", name, same)
	}
	return nil
}

// name returns the command name of the call, set by run.
func (c *invocation) name() string { return c.cmd }

// ---- exec ----

// execJSON is the --json shape of exec.
type execJSON struct {
	ExitCode int    `json:"exit_code"`
	Stdout   string `json:"stdout"`
	Stderr   string `json:"stderr"`
}

const maxStdin = 512 << 10

func cmdExec(e *env, c *invocation) error {
	name := c.args[0]
	if len(c.trailing) == 0 {
		return usagef("exec: give the command after --: subbus %s exec %s -- COMMAND ARG...", c.driver, name)
	}
	envs, err := parseKV("--env", c.o.env)
	if err != nil {
		return err
	}
	req := messages.ExecRequest{Name: name, Stream: true, Command: c.trailing, Env: envs, WorkDir: c.o.workdir, User: c.o.user}
	if c.o.stdin {
		b, err := io.ReadAll(io.LimitReader(os.Stdin, maxStdin+1))
		if err != nil {
			return &execError{drivers.Wrap(drivers.InvalidArgument, err, "reading standard input")}
		}
		if len(b) > maxStdin {
			return &execError{drivers.Errorf(drivers.InvalidArgument, "standard input exceeds %d bytes", maxStdin)}
		}
		req.Stdin = b
	}
	cl, err := e.client()
	if err != nil {
		return &execError{err}
	}
	ctx := e.ctx
	if e.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, e.timeout)
		defer cancel()
	}
	var out, errOut strings.Builder
	exit := -1
	err = cl.Stream(ctx, c.driver, c.o.host, messages.OpExec, req, func(ch messages.Chunk) error {
		if ch.Final {
			if ch.ExitCode != nil {
				exit = *ch.ExitCode
			}
			return nil
		}
		w, buf := e.stdout, &out
		if ch.Stream == "stderr" {
			w, buf = e.stderr, &errOut
		}
		if e.json {
			buf.Write(ch.Data)
			return nil
		}
		_, err := w.Write(ch.Data)
		return err
	})
	if err != nil {
		return &execError{err}
	}
	if exit < 0 {
		return &execError{drivers.Errorf(drivers.Internal, "the worker did not report an exit status")}
	}
	if e.json {
		if err := e.printJSON(execJSON{ExitCode: exit, Stdout: out.String(), Stderr: errOut.String()}); err != nil {
			return err
		}
	}
	if exit != 0 {
		if exit > 255 {
			exit = 255
		}
		return &exitError{exit}
	}
	return nil
}

// ---- logs ----

func cmdLogs(e *env, c *invocation) error {
	name := c.args[0]
	print := func(l messages.LogLine) error {
		if e.json {
			return jsonLine(e.stdout, l)
		}
		w := e.stdout
		if l.Stream == "stderr" {
			w = e.stderr
		}
		_, err := fmt.Fprintln(w, l.Line)
		return err
	}
	req := messages.LogsRequest{Name: name, Lines: c.o.lines, Follow: c.o.follow}
	if c.o.follow {
		cl, err := e.client()
		if err != nil {
			return err
		}
		err = cl.Stream(e.ctx, c.driver, c.o.host, messages.OpLogs, req, func(ch messages.Chunk) error {
			if ch.Line == nil {
				return nil
			}
			return print(*ch.Line)
		})
		if errors.Is(err, context.Canceled) {
			return nil // interrupted: the normal end of --follow
		}
		return err
	}
	var lines []messages.LogLine
	if err := do(e, c, messages.OpLogs, req, &lines, quickWait); err != nil {
		return err
	}
	if e.json {
		if lines == nil {
			lines = []messages.LogLine{}
		}
		return e.printJSON(lines)
	}
	for _, l := range lines {
		if err := print(l); err != nil {
			return err
		}
	}
	return nil
}

// ---- metrics ----

func cmdMetrics(e *env, c *invocation) error {
	name := c.args[0]
	sample := func() (messages.ResourceUsage, error) {
		var u messages.ResourceUsage
		err := do(e, c, messages.OpMetrics, messages.NameRequest{Name: name}, &u, quickWait)
		return u, err
	}
	header := fmt.Sprintf("%-20s %8s %10s %8s %10s %10s %10s %10s", "TIME", "CPU%", "MEM(MiB)", "DISK(GiB)",
		"READ(MiB/s)", "WRITE(MiB/s)", "RX(Mbps)", "TX(Mbps)")
	row := func(u messages.ResourceUsage) string {
		f := func(m drivers.Measure, format string, v float64) string {
			if !u.Measured.Has(m) {
				return "-"
			}
			return fmt.Sprintf(format, v)
		}
		t := u.Time
		if t.IsZero() {
			t = time.Now()
		}
		return fmt.Sprintf("%-20s %8s %10s %8s %10s %10s %10s %10s", t.Local().Format("2006-01-02 15:04:05"),
			f(drivers.MeasureCPU, "%.1f", u.CPUPercent), f(drivers.MeasureMemory, "%.1f", u.MemoryMB),
			f(drivers.MeasureDisk, "%.2f", u.DiskGB), f(drivers.MeasureDiskIO, "%.2f", u.DiskReadMBps),
			f(drivers.MeasureDiskIO, "%.2f", u.DiskWriteMBps), f(drivers.MeasureNetwork, "%.2f", u.NetworkRxMbps),
			f(drivers.MeasureNetwork, "%.2f", u.NetworkTxMbps))
	}
	if !c.o.watch {
		u, err := sample()
		if err != nil {
			return err
		}
		if e.json {
			return e.printJSON(u)
		}
		fmt.Fprintln(e.stdout, header)
		fmt.Fprintln(e.stdout, row(u))
		return nil
	}
	if !e.json {
		fmt.Fprintln(e.stdout, header)
	}
	t := time.NewTicker(c.o.interval)
	defer t.Stop()
	for {
		u, err := sample()
		if err != nil {
			if e.ctx.Err() != nil {
				return nil
			}
			return err
		}
		if e.json {
			if err := jsonLine(e.stdout, u); err != nil {
				return err
			}
		} else {
			fmt.Fprintln(e.stdout, row(u))
		}
		select {
		case <-e.ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// ---- health, capabilities ----

func cmdHealth(e *env, c *invocation) error {
	var h messages.Health
	if err := do(e, c, messages.OpHealth, nil, &h, quickWait); err != nil {
		return err
	}
	if e.json {
		if err := e.printJSON(h); err != nil {
			return err
		}
	} else {
		tw := e.table()
		fmt.Fprintf(tw, "Healthy:\t%v\nVersion:\t%s\nAPI version:\t%s\n", h.Healthy, dash(h.Version), dash(h.APIVersion))
		for _, s := range drivers.States() {
			if n, ok := h.Instances[s]; ok {
				fmt.Fprintf(tw, "Instances %s:\t%d\n", s, n)
			}
		}
		for _, i := range h.Issues {
			fmt.Fprintf(tw, "Issue:\t%s\n", i)
		}
		for _, k := range sortedKeys(h.Details) {
			fmt.Fprintf(tw, "%s:\t%s\n", k, h.Details[k])
		}
		_ = tw.Flush()
	}
	if !h.Healthy {
		return drivers.Errorf(drivers.Unavailable, "%s is unhealthy: %s", c.driver, strings.Join(h.Issues, "; "))
	}
	return nil
}

func cmdCapabilities(e *env, c *invocation) error {
	var r messages.CapabilitiesResult
	if err := do(e, c, messages.OpCapabilities, nil, &r, quickWait); err != nil {
		return err
	}
	if e.json {
		return e.printJSON(r)
	}
	tw := e.table()
	fmt.Fprintf(tw, "Driver:\t%s\nHost:\t%s\n", r.Driver, r.Host)
	caps := r.Capabilities
	for _, x := range []struct {
		n string
		v bool
	}{{"exec", caps.Exec}, {"logs", caps.Logs}, {"limits", caps.Limits}, {"snapshots", caps.Snapshots},
		{"clone", caps.Clone}, {"networks", caps.Networks}, {"events", caps.Events}} {
		fmt.Fprintf(tw, "%s:\t%v\n", x.n, x.v)
	}
	fmt.Fprintf(tw, "Ops:\t%s\n", strings.Join(r.Ops, " "))
	return tw.Flush()
}

func capsList(caps messages.Capabilities) string {
	var out []string
	for _, x := range []struct {
		n string
		v bool
	}{{"exec", caps.Exec}, {"logs", caps.Logs}, {"limits", caps.Limits}, {"snapshots", caps.Snapshots},
		{"clone", caps.Clone}, {"networks", caps.Networks}, {"events", caps.Events}} {
		if x.v {
			out = append(out, x.n)
		}
	}
	if len(out) == 0 {
		return "-"
	}
	return strings.Join(out, ",")
}

// ---- snapshots ----

func cmdSnapshot(e *env, c *invocation) error {
	name, snap := c.args[0], c.args[1]
	req := messages.SnapshotRequest{Name: name, Snapshot: snap}
	op := c.op
	verb := strings.TrimPrefix(c.name(), "snapshot ")
	stop := e.progress(verb + " snapshot " + snap + " of " + name)
	defer stop()
	if op == messages.OpSnapshotCreate {
		var s messages.Snapshot
		if err := do(e, c, op, req, &s, longWait); err != nil {
			return err
		}
		stop()
		if e.json {
			return e.printJSON(s)
		}
		fmt.Fprintf(e.stdout, "%s: snapshot %s created\n", name, s.Name)
		return nil
	}
	var res messages.ChangedResult
	if err := do(e, c, op, req, &res, longWait); err != nil {
		return err
	}
	stop()
	if e.json {
		return e.printJSON(res)
	}
	fmt.Fprintf(e.stdout, "%s: snapshot %s %sd\n", name, snap, verb)
	return nil
}

func cmdSnapshotList(e *env, c *invocation) error {
	name := c.args[0]
	var list []messages.Snapshot
	if err := do(e, c, messages.OpSnapshotList, messages.NameRequest{Name: name}, &list, quickWait); err != nil {
		return err
	}
	if e.json {
		if list == nil {
			list = []messages.Snapshot{}
		}
		return e.printJSON(list)
	}
	tw := e.table()
	fmt.Fprintln(tw, "NAME\tCREATED\tSIZE\tDESCRIPTION")
	for _, s := range list {
		size := "-"
		if s.SizeBytes > 0 {
			size = fmt.Sprintf("%.1fMB", float64(s.SizeBytes)/1e6)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", s.Name, age(s.Created), size, dash(s.Description))
	}
	return tw.Flush()
}

// ---- limits ----

func cmdLimits(e *env, c *invocation) error {
	name := c.args[0]
	var l messages.ResourceLimits
	if c.op == messages.OpLimitsGet {
		if err := do(e, c, messages.OpLimitsGet, messages.NameRequest{Name: name}, &l, quickWait); err != nil {
			return err
		}
	} else {
		want, unset := c.o.limits()
		if want.IsZero() && len(unset) == 0 {
			return usagef("limits set: give at least one of --cpu, --memory, --disk, --pids (a value, or none to remove the limit)")
		}
		req := messages.LimitsSetRequest{Name: name, Limits: want, Unset: unset}
		if err := do(e, c, messages.OpLimitsSet, req, &l, quickWait); err != nil {
			return err
		}
	}
	if e.json {
		return e.printJSON(l)
	}
	fmt.Fprintf(e.stdout, "%s: %s\n", name, limitsText(l))
	return nil
}

// ---- networks ----

func cmdNetworkList(e *env, c *invocation) error {
	var list []messages.Network
	if err := do(e, c, messages.OpNetworkList, nil, &list, quickWait); err != nil {
		return err
	}
	if e.json {
		if list == nil {
			list = []messages.Network{}
		}
		return e.printJSON(list)
	}
	tw := e.table()
	fmt.Fprintln(tw, "NAME\tTYPE\tSUBNET\tGATEWAY\tINTERNAL\tATTACHABLE\tMANAGED")
	for _, n := range list {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%v\t%v\t%v\n", n.Name, dash(n.Type), dash(n.Subnet), dash(n.Gateway), n.Internal, n.Attachable, n.Managed)
	}
	return tw.Flush()
}

func cmdNetwork(e *env, c *invocation) error {
	name := c.args[0]
	var op messages.Op
	var req any
	if c.op == messages.OpNetworkAttach {
		nc, err := parseNetwork(c.args[1])
		if err != nil {
			return err
		}
		op, req = messages.OpNetworkAttach, messages.NetworkAttachRequest{Name: name, Network: nc}
	} else {
		op, req = messages.OpNetworkDetach, messages.NetworkDetachRequest{Name: name, Network: c.args[1]}
	}
	var res messages.ChangedResult
	if err := do(e, c, op, req, &res, quickWait); err != nil {
		return err
	}
	if e.json {
		return e.printJSON(res)
	}
	if !res.Changed {
		fmt.Fprintf(e.stdout, "%s: already attached to %s\n", name, c.args[1])
		return nil
	}
	fmt.Fprintf(e.stdout, "%s: %sed %s\n", name, strings.TrimPrefix(c.name(), "network "), c.args[1])
	return nil
}
