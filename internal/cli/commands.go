package cli

import (
	"flag"
	"strings"
	"time"

	"github.com/subbus/subbus/messages"
)

// opts holds every command flag; each command registers the ones it takes.
type opts struct {
	host        string
	allHosts    bool
	inventory   bool
	force       bool
	image       string
	cpu         limitFlag
	memory      limitFlag
	disk        limitFlag
	pids        limitFlag
	grace       time.Duration
	graceFlag   durationFlag
	env         stringList
	volumes     stringList
	networks    stringList
	labels      stringList
	workdir     string
	user        string
	file        string
	lines       int
	follow      bool
	watch       bool
	interval    time.Duration
	since       string
	eventDriver string
	instance    string
	eventType   string
	stdin       bool
	noWait      bool   // --no-wait on long ops (opscmd.go)
	opState     string // ops list --state
	quiet       bool
	state       string
	admin       adminOpts
}

func newOpts() *opts {
	o := &opts{cpu: numberFlag(false), memory: mibFlag(), disk: gibFlag(), pids: numberFlag(true), interval: 2 * time.Second}
	o.graceFlag.d = &o.grace
	return o
}

// stringList is a repeatable flag.
type stringList []string

func (l *stringList) String() string     { return strings.Join(*l, ",") }
func (l *stringList) Set(v string) error { *l = append(*l, v); return nil }

// flagAliases maps a second spelling of a flag to its first (help prints
// them on one line: "-f, --file FILE"). Both always work.
var flagAliases = map[string]string{
	"j": "json", "s": "server", "f": "file", "t": "grace", "time": "grace",
	"metadata": "label", "base-image": "image", "q": "quiet", "h": "help",
}

// alias registers name as a second spelling of the registered flag primary.
func alias(fs *flag.FlagSet, name, primary string) {
	fs.Var(fs.Lookup(primary).Value, name, "same as --"+primary)
}

// flagDefs registers one flag (and its other spellings) by name.
var flagDefs = map[string]func(fs *flag.FlagSet, o *opts){
	"host": func(fs *flag.FlagSet, o *opts) {
		fs.StringVar(&o.host, "host", "", "ask only the worker of host `H`")
	},
	"all-hosts": func(fs *flag.FlagSet, o *opts) {
		fs.BoolVar(&o.allHosts, "all-hosts", false, "ask every worker found by discovery, in parallel")
	},
	"inventory": func(fs *flag.FlagSet, o *opts) {
		fs.BoolVar(&o.inventory, "inventory", false, "read the fleet inventory instead of asking the workers (fast; records as last confirmed)")
	},
	"list-filters": func(fs *flag.FlagSet, o *opts) {
		fs.StringVar(&o.state, "state", "", "only instances in `STATE` (running, stopped, error, …)")
		fs.Var(&o.labels, "label", "only instances with label `K=V` (repeatable: all must match)")
		fs.BoolVar(&o.quiet, "quiet", false, "print the names only, one per line")
		alias(fs, "q", "quiet")
	},
	"force": func(fs *flag.FlagSet, o *opts) {
		fs.BoolVar(&o.force, "force", false, "kill at once / delete even if running")
	},
	"grace": func(fs *flag.FlagSet, o *opts) {
		fs.Var(&o.graceFlag, "grace", "graceful stop period `D` before the instance is killed (30s, 1m, or seconds; default: the worker's)")
		alias(fs, "time", "grace")
		alias(fs, "t", "grace")
	},
	"image": func(fs *flag.FlagSet, o *opts) {
		fs.StringVar(&o.image, "image", "", "`IMAGE` (process, supervisor: the executable); template key base_image")
		alias(fs, "base-image", "image")
	},
	"cpu": func(fs *flag.FlagSet, o *opts) { fs.Var(&o.cpu, "cpu", "CPU cores limit `N` (0.5, 2)") },
	"memory": func(fs *flag.FlagSet, o *opts) {
		fs.Var(&o.memory, "memory", "memory limit `SIZE`: 512M, 1G, 1.5Gi; a plain number is MiB")
	},
	"disk": func(fs *flag.FlagSet, o *opts) {
		fs.Var(&o.disk, "disk", "disk limit `SIZE`: 10G, 512M; a plain number is GiB")
	},
	"pids": func(fs *flag.FlagSet, o *opts) { fs.Var(&o.pids, "pids", "process count limit `N`") },
	"env":  func(fs *flag.FlagSet, o *opts) { fs.Var(&o.env, "env", "environment variable `K=V` (repeatable)") },
	"volume": func(fs *flag.FlagSet, o *opts) {
		fs.Var(&o.volumes, "volume", "mount `SRC:DST[:ro]` (repeatable)")
	},
	"network": func(fs *flag.FlagSet, o *opts) {
		fs.Var(&o.networks, "network", "attach to network `NAME[=IP]` (repeatable)")
	},
	"label": func(fs *flag.FlagSet, o *opts) {
		fs.Var(&o.labels, "label", "label `K=V` (repeatable); template key metadata")
		alias(fs, "metadata", "label")
	},
	"workdir": func(fs *flag.FlagSet, o *opts) { fs.StringVar(&o.workdir, "workdir", "", "working directory `DIR`") },
	// --user is the NATS user (natscli); the user inside the instance is --run-as.
	"run-as": func(fs *flag.FlagSet, o *opts) {
		fs.StringVar(&o.user, "run-as", "", "`USER` to run as inside the instance; template key user (or run_as)")
	},
	"file": func(fs *flag.FlagSet, o *opts) {
		fs.StringVar(&o.file, "file", "", "create from a YAML instance template `FILE`")
		alias(fs, "f", "file")
	},
	"lines": func(fs *flag.FlagSet, o *opts) {
		fs.IntVar(&o.lines, "lines", 0, "number `N` of last lines (0: the worker's default)")
	},
	"follow": func(fs *flag.FlagSet, o *opts) { fs.BoolVar(&o.follow, "follow", false, "keep streaming new output") },
	"watch": func(fs *flag.FlagSet, o *opts) {
		fs.BoolVar(&o.watch, "watch", false, "sample repeatedly until interrupted")
	},
	"interval": func(fs *flag.FlagSet, o *opts) {
		fs.Var(&durationFlag{d: &o.interval}, "interval", "time `D` between samples with --watch (default 2s)")
	},
	"since": func(fs *flag.FlagSet, o *opts) {
		fs.StringVar(&o.since, "since", "", "events from `DURATION` ago (1h) or a TIME (RFC 3339 or 2006-01-02)")
	},
	"event-filters": func(fs *flag.FlagSet, o *opts) {
		fs.StringVar(&o.eventDriver, "driver", "", "only events of driver `D`")
		fs.StringVar(&o.instance, "instance", "", "only events of instance `NAME`")
		fs.StringVar(&o.eventType, "type", "", "only events of type `T` (created, started, …)")
	},
	"admin-creds": func(fs *flag.FlagSet, o *opts) {
		a := &o.admin
		fs.StringVar(&a.hosts, "hosts", "", "worker hosts `H1,H2,…`: one identity each")
		fs.StringVar(&a.clusterDrivers, "cluster-drivers", "", "drivers served on pooled subjects (cluster-wide substrates) `D1,…`")
		fs.Var(&a.clients, "client", "client identity `NAME:ROLE[:drivers=D,…][:hosts=H,…]`, ROLE operator|reader|events|admin (repeatable; default admin, operator, reader, events)")
		fs.StringVar(&a.out, "out", "", "directory `DIR` to write into (must not hold earlier output)")
		fs.BoolVar(&a.envKeys, "env-keys", false, "write $SUBBUS_NKEY_<NAME> references in accounts.conf and the keys to nkeys.env")
		fs.StringVar(&a.url, "url", "", "server `URL`(s) to put in the generated nats contexts")
		fs.DurationVar(&a.streamFor, "stream-for", time.Hour, "how long a worker may stream replies to one request")
		fs.StringVar(&a.account, "account", "SUBBUS", "account of the fleet")
		fs.StringVar(&a.names, "names", "", "certs: the servers' DNS names and IPs `N1,N2,…`")
		fs.StringVar(&a.clientCerts, "client-certs", "", "certs: also issue client certificates for `NAME1,…` (optional mTLS)")
		fs.DurationVar(&a.validity, "validity", 365*24*time.Hour, "certs: validity of the CA and certificates")
	},
	"stdin": func(fs *flag.FlagSet, o *opts) {
		fs.BoolVar(&o.stdin, "i", false, "send standard input to the command (read fully first, up to 512 KiB)")
	},
}

// check validates flag values that are not specific to one command.
func (o *opts) check() error {
	if o.host != "" && !messages.ValidToken(o.host) {
		return usagef("--host: %q is not a valid host name (letters, digits, '-' and '_')", o.host)
	}
	if n := btoi(o.host != "") + btoi(o.allHosts) + btoi(o.inventory); n > 1 {
		return usagef("--host, --all-hosts and --inventory exclude each other")
	}
	if o.watch && o.interval <= 0 {
		return usagef("--interval must be positive")
	}
	if o.lines < 0 {
		return usagef("--lines must not be negative")
	}
	return nil
}

// limits returns the limits given with --cpu, --memory, --disk, --pids
// and the fields given as "none" (to remove).
func (o *opts) limits() (messages.ResourceLimits, []string) {
	l := messages.ResourceLimits{CPUCores: o.cpu.v, MemoryMB: int64(o.memory.v), DiskGB: o.disk.v, PIDs: int64(o.pids.v)}
	var unset []string
	for _, f := range []struct {
		f    *limitFlag
		name string
	}{{&o.cpu, messages.LimitCPUCores}, {&o.memory, messages.LimitMemoryMB}, {&o.disk, messages.LimitDiskGB}, {&o.pids, messages.LimitPIDs}} {
		if f.f.none {
			unset = append(unset, f.name)
		}
	}
	return l, unset
}

// command is one subbus command.
type command struct {
	// op is the operation a driver command sends; its name is derived
	// from it (CommandName). Top-level commands have no op.
	op       messages.Op
	name     string // "list", "snapshot create", "events"
	usage    string // after "subbus "
	summary  string
	example  string // one example command line, after "subbus "
	flags    []string
	minArgs  int
	maxArgs  int  // -1: unlimited
	trailing bool // takes arguments after --
	top      bool // not under a driver
	hidden   bool // not in help (__complete)
	// instanceArg: the first argument names an instance (completion).
	instanceArg bool
	run         func(e *env, c *invocation) error
}

var commands []*command

func init() {
	commands = []*command{
		{op: messages.OpList, usage: "<driver> list [--host H | --all-hosts | --inventory] [--state S] [--label K=V]... [-q]", summary: "list instances",
			example: "process list --state running --label team=web",
			flags:   []string{"host", "all-hosts", "inventory", "list-filters"}, run: cmdList},
		{op: messages.OpGet, usage: "<driver> get <name> [--host H]", summary: "show one instance: state, command, environment keys, volumes, networks, pid, exit code",
			example: "docker get web --json",
			flags:   []string{"host"}, minArgs: 1, maxArgs: 1, instanceArg: true, run: cmdGet},
		{op: messages.OpCreate, usage: "<driver> create <name> [--image IMAGE] [--cpu N] [--memory SIZE] [--disk SIZE] [--pids N] [--env K=V]... " +
			"[--volume SRC:DST[:ro]]... [--network NAME[=IP]]... [--label K=V]... [--workdir D] [--run-as U] [-- COMMAND ARG...]\n" +
			"       subbus <driver> create [<name>] -f template.yaml",
			summary: "create an instance (not started); the words after -- are the whole command",
			example: "process create web --memory 256M -- python3 -u -m http.server 8080",
			flags:   []string{"host", "image", "cpu", "memory", "disk", "pids", "env", "volume", "network", "label", "workdir", "run-as", "file"},
			minArgs: 0, maxArgs: 1, trailing: true, run: cmdCreate},
		{op: messages.OpStart, usage: "<driver> start <name> [--host H]", summary: "start an instance",
			example: "process start web",
			flags:   []string{"host"}, minArgs: 1, maxArgs: 1, instanceArg: true, run: cmdChange},
		{op: messages.OpStop, usage: "<driver> stop <name> [--host H] [--force] [--grace D]",
			summary: "stop an instance (--grace: graceful period before it is killed)",
			example: "docker stop web --grace 10s",
			flags:   []string{"host", "force", "grace"}, minArgs: 1, maxArgs: 1, instanceArg: true, run: cmdChange},
		{op: messages.OpRestart, usage: "<driver> restart <name> [--host H] [--force] [--grace D]", summary: "restart an instance",
			example: "supervisor restart worker --grace 5",
			flags:   []string{"host", "force", "grace"}, minArgs: 1, maxArgs: 1, instanceArg: true, run: cmdChange},
		{op: messages.OpDelete, usage: "<driver> delete <name> [--host H] [--force]", summary: "delete an instance",
			example: "lxc delete old-box --force",
			flags:   []string{"host", "force"}, minArgs: 1, maxArgs: 1, instanceArg: true, run: cmdChange},
		{op: messages.OpExec, usage: "<driver> exec <name> [--host H] [--env K=V]... [--workdir D] [--run-as U] [-i] -- COMMAND ARG...",
			summary: "run a command in an instance, streaming its output; exits with its status",
			example: "docker exec web --env DEBUG=1 -- sh -c 'ls /srv'",
			flags:   []string{"host", "env", "workdir", "run-as", "stdin"}, minArgs: 1, maxArgs: 1, trailing: true, instanceArg: true, run: cmdExec},
		{op: messages.OpLogs, usage: "<driver> logs <name> [--host H] [--lines N] [--follow]", summary: "show an instance's output",
			example: "process logs web --lines 50 --follow",
			flags:   []string{"host", "lines", "follow"}, minArgs: 1, maxArgs: 1, instanceArg: true, run: cmdLogs},
		{op: messages.OpMetrics, usage: "<driver> metrics <name> [--host H] [--watch [--interval D]]", summary: "show resource usage",
			example: "docker metrics web --watch --interval 5s",
			flags:   []string{"host", "watch", "interval"}, minArgs: 1, maxArgs: 1, instanceArg: true, run: cmdMetrics},
		{op: messages.OpHealth, usage: "<driver> health [--host H]", summary: "show the substrate's health",
			example: "lxc health --host h1",
			flags:   []string{"host"}, run: cmdHealth},
		{op: messages.OpCapabilities, usage: "<driver> capabilities [--host H]", summary: "show what the driver can do",
			example: "libvirt capabilities --json",
			flags:   []string{"host"}, run: cmdCapabilities},
		{op: messages.OpSnapshotCreate, usage: "<driver> snapshot create <name> <snapshot> [--host H]", summary: "snapshot an instance",
			example: "lxc snapshot create box before-upgrade",
			flags:   []string{"host"}, minArgs: 2, maxArgs: 2, instanceArg: true, run: cmdSnapshot},
		{op: messages.OpSnapshotRestore, usage: "<driver> snapshot restore <name> <snapshot> [--host H]", summary: "restore a snapshot",
			example: "lxc snapshot restore box before-upgrade",
			flags:   []string{"host"}, minArgs: 2, maxArgs: 2, instanceArg: true, run: cmdSnapshot},
		{op: messages.OpSnapshotDelete, usage: "<driver> snapshot delete <name> <snapshot> [--host H]", summary: "delete a snapshot",
			example: "lxc snapshot delete box before-upgrade",
			flags:   []string{"host"}, minArgs: 2, maxArgs: 2, instanceArg: true, run: cmdSnapshot},
		{op: messages.OpSnapshotList, usage: "<driver> snapshot list <name> [--host H]", summary: "list an instance's snapshots",
			example: "docker snapshot list web",
			flags:   []string{"host"}, minArgs: 1, maxArgs: 1, instanceArg: true, run: cmdSnapshotList},
		{op: messages.OpClone, usage: "<driver> clone <source> <target> [--host H]", summary: "clone an instance",
			example: "docker clone web web-copy",
			flags:   []string{"host"}, minArgs: 2, maxArgs: 2, instanceArg: true, run: cmdClone},
		{op: messages.OpLimitsGet, usage: "<driver> limits get <name> [--host H]", summary: "show an instance's limits",
			example: "process limits get web",
			flags:   []string{"host"}, minArgs: 1, maxArgs: 1, instanceArg: true, run: cmdLimits},
		{op: messages.OpLimitsSet, usage: "<driver> limits set <name> [--cpu N|none] [--memory SIZE|none] [--disk SIZE|none] [--pids N|none] [--host H]",
			summary: "change an instance's limits (none removes one)", flags: []string{"host", "cpu", "memory", "disk", "pids"},
			example: "docker limits set web --memory 1G --pids none",
			minArgs: 1, maxArgs: 1, instanceArg: true, run: cmdLimits},
		{op: messages.OpNetworkList, usage: "<driver> network list [--host H]", summary: "list networks",
			example: "docker network list",
			flags:   []string{"host"}, run: cmdNetworkList},
		{op: messages.OpNetworkAttach, usage: "<driver> network attach <name> <network>[=IP] [--host H]", summary: "attach to a network",
			example: "docker network attach web backend=172.30.0.10",
			flags:   []string{"host"}, minArgs: 2, maxArgs: 2, instanceArg: true, run: cmdNetwork},
		{op: messages.OpNetworkDetach, usage: "<driver> network detach <name> <network> [--host H]", summary: "detach from a network",
			example: "docker network detach web backend",
			flags:   []string{"host"}, minArgs: 2, maxArgs: 2, instanceArg: true, run: cmdNetwork},
		{name: "events", top: true,
			usage:   "events [--follow] [--driver D] [--host H] [--instance N] [--type T] [--since DURATION|TIME]",
			summary: "show lifecycle events from SUBSTRATE_EVENTS", flags: []string{"follow", "event-filters", "host", "since"},
			example: "events --follow --driver docker --type failed",
			run:     cmdEvents},
		{op: messages.OpCancel, usage: "<driver> op cancel <id> [--host H]",
			summary: "cancel a long operation (as subbus ops cancel; --host skips the record lookup)",
			example: "docker op cancel 7f3c9a… --host hosta",
			flags:   []string{"host"}, minArgs: 1, maxArgs: 1, run: cmdOpCancel},
		{name: "ops", top: true,
			usage: "ops list [--driver D] [--host H] [--instance N] [--type OP] [--state S]\n" +
				"       subbus ops get|wait|cancel <id>",
			summary: "follow long operations (begun with --no-wait): list, show, wait printing progress, cancel",
			example: "ops wait 7f3c9a…",
			flags:   []string{"host", "event-filters", "op-state"}, minArgs: 1, maxArgs: 2, run: cmdOps},
		{name: "workers", top: true, usage: "workers", summary: "list workers with drivers, capabilities, health and version",
			example: "workers --json", run: cmdWorkers},
		{name: "admin", top: true,
			usage: "admin creds --hosts H1,H2,… --out DIR [--cluster-drivers D,…] [--client NAME:ROLE[:drivers=…][:hosts=…]]... [--env-keys] [--url URL]\n" +
				"       subbus admin certs --names N1,N2,… --out DIR [--client-certs NAME,…] [--validity D]",
			summary: "generate a fleet's NATS identities and permissions, or its TLS certificates (docs/security.md)",
			example: "admin creds --hosts h1,h2 --out ./fleet",
			flags:   []string{"admin-creds"}, minArgs: 1, maxArgs: 1, run: cmdAdmin},
		{name: "completion", top: true, usage: "completion bash|zsh|fish",
			summary: "print a shell completion script (drivers, commands, flags, and instance names from a live list)",
			example: "completion bash > /etc/bash_completion.d/subbus", minArgs: 1, maxArgs: 1, run: cmdCompletion},
		{name: "man", top: true, usage: "man", summary: "print the subbus(1) manual page (roff), made from the command table",
			example: "man > subbus.1 && man -l subbus.1", run: cmdMan},
		{name: "version", top: true, usage: "version", summary: "print subbus's version (the same as the worker's build)",
			example: "version --json", run: cmdVersion},
		{name: "help", top: true, usage: "help [<driver>] [<command>...]", summary: "show help for subbus, a driver, or a command",
			example: "help snapshot create", maxArgs: -1},
		{name: "__complete", top: true, hidden: true, usage: "__complete WORD...", summary: "completion candidates for the words typed so far",
			maxArgs: -1, run: func(e *env, c *invocation) error { return cmdComplete(e, c.args) }},
	}
	for _, c := range commands {
		if c.op.Long() { // one table: the long ops' commands take --no-wait
			c.flags = append(c.flags, "no-wait")
			c.usage += " [--no-wait]"
		}
		if c.op != "" {
			c.name = CommandName(c.op)
			if group, _, ok := strings.Cut(c.name, " "); ok {
				groups[group] = true
			}
		}
	}
}

// CommandName is the CLI command of op: the op with '-' read as a space
// ("snapshot-create" is "subbus <driver> snapshot create").
func CommandName(op messages.Op) string { return strings.ReplaceAll(string(op), "-", " ") }

// groups are the driver verbs that take a sub-verb ("snapshot", "limits",
// "network"), derived from the commands' names.
var groups = map[string]bool{}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}
