package cli

import (
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/messages"
)

// opts holds every command flag; each command registers the ones it takes.
type opts struct {
	host        string
	allHosts    bool
	inventory   bool
	force       bool
	image       string
	cpu         float64
	memory      int64
	disk        float64
	pids        int64
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
	admin       adminOpts
}

// stringList is a repeatable flag.
type stringList []string

func (l *stringList) String() string     { return strings.Join(*l, ",") }
func (l *stringList) Set(v string) error { *l = append(*l, v); return nil }

// flagDefs registers one flag (or a flag and its shorthand) by name.
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
	"force": func(fs *flag.FlagSet, o *opts) {
		fs.BoolVar(&o.force, "force", false, "kill at once / delete even if running")
	},
	"image": func(fs *flag.FlagSet, o *opts) {
		fs.StringVar(&o.image, "image", "", "image (process driver: the executable)")
	},
	"cpu":    func(fs *flag.FlagSet, o *opts) { fs.Float64Var(&o.cpu, "cpu", 0, "CPU cores limit") },
	"memory": func(fs *flag.FlagSet, o *opts) { fs.Int64Var(&o.memory, "memory", 0, "memory limit in `MB`") },
	"disk":   func(fs *flag.FlagSet, o *opts) { fs.Float64Var(&o.disk, "disk", 0, "disk limit in `GB`") },
	"pids":   func(fs *flag.FlagSet, o *opts) { fs.Int64Var(&o.pids, "pids", 0, "process count limit") },
	"env":    func(fs *flag.FlagSet, o *opts) { fs.Var(&o.env, "env", "environment variable `K=V` (repeatable)") },
	"volume": func(fs *flag.FlagSet, o *opts) {
		fs.Var(&o.volumes, "volume", "mount `SRC:DST[:ro]` (repeatable)")
	},
	"network": func(fs *flag.FlagSet, o *opts) {
		fs.Var(&o.networks, "network", "attach to network `NAME[=IP]` (repeatable)")
	},
	"label":   func(fs *flag.FlagSet, o *opts) { fs.Var(&o.labels, "label", "metadata label `K=V` (repeatable)") },
	"workdir": func(fs *flag.FlagSet, o *opts) { fs.StringVar(&o.workdir, "workdir", "", "working directory") },
	// --user is the NATS user (natscli); the user inside the instance is --run-as.
	"run-as": func(fs *flag.FlagSet, o *opts) {
		fs.StringVar(&o.user, "run-as", "", "user to run the command as inside the instance")
	},
	"file": func(fs *flag.FlagSet, o *opts) {
		fs.StringVar(&o.file, "f", "", "create from a YAML instance template `FILE`")
		fs.StringVar(&o.file, "file", "", "same as -f")
	},
	"lines": func(fs *flag.FlagSet, o *opts) {
		fs.IntVar(&o.lines, "lines", 0, "number of last lines (0: the worker's default)")
	},
	"follow": func(fs *flag.FlagSet, o *opts) { fs.BoolVar(&o.follow, "follow", false, "keep streaming new output") },
	"watch": func(fs *flag.FlagSet, o *opts) {
		fs.BoolVar(&o.watch, "watch", false, "sample repeatedly until interrupted")
	},
	"interval": func(fs *flag.FlagSet, o *opts) {
		fs.DurationVar(&o.interval, "interval", 2*time.Second, "time between samples with --watch")
	},
	"since": func(fs *flag.FlagSet, o *opts) {
		fs.StringVar(&o.since, "since", "", "events from `DURATION` ago (1h) or a TIME (RFC 3339 or 2006-01-02)")
	},
	"event-filters": func(fs *flag.FlagSet, o *opts) {
		fs.StringVar(&o.eventDriver, "driver", "", "only events of this driver")
		fs.StringVar(&o.instance, "instance", "", "only events of this instance")
		fs.StringVar(&o.eventType, "type", "", "only events of this type (created, started, …)")
	},
	"admin-creds": func(fs *flag.FlagSet, o *opts) {
		a := &o.admin
		fs.StringVar(&a.hosts, "hosts", "", "worker hosts `H1,H2,…`: one identity each")
		fs.StringVar(&a.clusterDrivers, "cluster-drivers", "", "drivers served on pooled subjects (cluster-wide substrates) `D1,…`")
		fs.Var(&a.clients, "client", "client identity `NAME:ROLE[:drivers=D,…][:hosts=H,…]`, ROLE operator|reader|events|admin (repeatable; default admin, operator, reader, events)")
		fs.StringVar(&a.out, "out", "", "directory to write into (must not hold earlier output)")
		fs.BoolVar(&a.envKeys, "env-keys", false, "write $SUBBUS_NKEY_<NAME> references in accounts.conf and the keys to nkeys.env")
		fs.StringVar(&a.url, "url", "", "server URL(s) to put in the generated nats contexts")
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
	if o.cpu < 0 || o.memory < 0 || o.disk < 0 || o.pids < 0 {
		return usagef("limits must not be negative")
	}
	return nil
}

// command is one subbus command.
type command struct {
	// op is the operation a driver command sends; its name is derived
	// from it (CommandName). Top-level commands have no op.
	op       messages.Op
	name     string // "list", "snapshot create", "events"
	usage    string // after "subbus "
	summary  string
	flags    []string
	minArgs  int
	maxArgs  int  // -1: unlimited
	trailing bool // takes arguments after --
	top      bool // not under a driver
	run      func(e *env, c *invocation) error
}

var commands []*command

func init() {
	commands = []*command{
		{op: messages.OpList, usage: "<driver> list [--host H | --all-hosts | --inventory]", summary: "list instances",
			flags: []string{"host", "all-hosts", "inventory"}, run: cmdList},
		{op: messages.OpGet, usage: "<driver> get <name> [--host H]", summary: "show one instance",
			flags: []string{"host"}, minArgs: 1, maxArgs: 1, run: cmdGet},
		{op: messages.OpCreate, usage: "<driver> create <name> --image IMAGE [--cpu N] [--memory MB] [--disk GB] [--env K=V]... " +
			"[--volume SRC:DST[:ro]]... [--network NAME[=IP]]... [--label K=V]... [--workdir D] [--run-as U] [-- COMMAND ARG...]\n" +
			"       subbus <driver> create [<name>] -f template.yaml",
			summary: "create an instance",
			flags:   []string{"host", "image", "cpu", "memory", "disk", "pids", "env", "volume", "network", "label", "workdir", "run-as", "file"},
			minArgs: 0, maxArgs: 1, trailing: true, run: cmdCreate},
		{op: messages.OpStart, usage: "<driver> start <name> [--host H]", summary: "start an instance",
			flags: []string{"host"}, minArgs: 1, maxArgs: 1, run: cmdChange},
		{op: messages.OpStop, usage: "<driver> stop <name> [--host H] [--force] [--timeout D]",
			summary: "stop an instance (--timeout: graceful period before it is killed)",
			flags:   []string{"host", "force"}, minArgs: 1, maxArgs: 1, run: cmdChange},
		{op: messages.OpRestart, usage: "<driver> restart <name> [--host H] [--force] [--timeout D]", summary: "restart an instance",
			flags: []string{"host", "force"}, minArgs: 1, maxArgs: 1, run: cmdChange},
		{op: messages.OpDelete, usage: "<driver> delete <name> [--host H] [--force]", summary: "delete an instance",
			flags: []string{"host", "force"}, minArgs: 1, maxArgs: 1, run: cmdChange},
		{op: messages.OpExec, usage: "<driver> exec <name> [--host H] [--env K=V]... [--workdir D] [--run-as U] [-i] -- COMMAND ARG...",
			summary: "run a command in an instance, streaming its output; exits with its status",
			flags:   []string{"host", "env", "workdir", "run-as", "stdin"}, minArgs: 1, maxArgs: 1, trailing: true, run: cmdExec},
		{op: messages.OpLogs, usage: "<driver> logs <name> [--host H] [--lines N] [--follow]", summary: "show an instance's output",
			flags: []string{"host", "lines", "follow"}, minArgs: 1, maxArgs: 1, run: cmdLogs},
		{op: messages.OpMetrics, usage: "<driver> metrics <name> [--host H] [--watch [--interval D]]", summary: "show resource usage",
			flags: []string{"host", "watch", "interval"}, minArgs: 1, maxArgs: 1, run: cmdMetrics},
		{op: messages.OpHealth, usage: "<driver> health [--host H]", summary: "show the substrate's health",
			flags: []string{"host"}, run: cmdHealth},
		{op: messages.OpCapabilities, usage: "<driver> capabilities [--host H]", summary: "show what the driver can do",
			flags: []string{"host"}, run: cmdCapabilities},
		{op: messages.OpSnapshotCreate, usage: "<driver> snapshot create <name> <snapshot> [--host H]", summary: "snapshot an instance",
			flags: []string{"host"}, minArgs: 2, maxArgs: 2, run: cmdSnapshot},
		{op: messages.OpSnapshotRestore, usage: "<driver> snapshot restore <name> <snapshot> [--host H]", summary: "restore a snapshot",
			flags: []string{"host"}, minArgs: 2, maxArgs: 2, run: cmdSnapshot},
		{op: messages.OpSnapshotDelete, usage: "<driver> snapshot delete <name> <snapshot> [--host H]", summary: "delete a snapshot",
			flags: []string{"host"}, minArgs: 2, maxArgs: 2, run: cmdSnapshot},
		{op: messages.OpSnapshotList, usage: "<driver> snapshot list <name> [--host H]", summary: "list an instance's snapshots",
			flags: []string{"host"}, minArgs: 1, maxArgs: 1, run: cmdSnapshotList},
		{op: messages.OpClone, usage: "<driver> clone <source> <target> [--host H]", summary: "clone an instance",
			flags: []string{"host"}, minArgs: 2, maxArgs: 2, run: cmdClone},
		{op: messages.OpLimitsGet, usage: "<driver> limits get <name> [--host H]", summary: "show an instance's limits",
			flags: []string{"host"}, minArgs: 1, maxArgs: 1, run: cmdLimits},
		{op: messages.OpLimitsSet, usage: "<driver> limits set <name> [--cpu N] [--memory MB] [--disk GB] [--pids N] [--host H]",
			summary: "change an instance's limits", flags: []string{"host", "cpu", "memory", "disk", "pids"},
			minArgs: 1, maxArgs: 1, run: cmdLimits},
		{op: messages.OpNetworkList, usage: "<driver> network list [--host H]", summary: "list networks",
			flags: []string{"host"}, run: cmdNetworkList},
		{op: messages.OpNetworkAttach, usage: "<driver> network attach <name> <network>[=IP] [--host H]", summary: "attach to a network",
			flags: []string{"host"}, minArgs: 2, maxArgs: 2, run: cmdNetwork},
		{op: messages.OpNetworkDetach, usage: "<driver> network detach <name> <network> [--host H]", summary: "detach from a network",
			flags: []string{"host"}, minArgs: 2, maxArgs: 2, run: cmdNetwork},
		{op: messages.OpCancel, usage: "<driver> op cancel <id> [--host H]",
			summary: "cancel a long operation (as subbus ops cancel; --host skips the record lookup)",
			flags:   []string{"host"}, minArgs: 1, maxArgs: 1, run: cmdOpCancel},
		{name: "events", top: true,
			usage:   "events [--follow] [--driver D] [--host H] [--instance N] [--type T] [--since DURATION|TIME]",
			summary: "show lifecycle events from SUBSTRATE_EVENTS", flags: []string{"follow", "event-filters", "host", "since"},
			run: cmdEvents},
		{name: "ops", top: true,
			usage: "ops list [--driver D] [--host H] [--instance N] [--type OP] [--state S]\n" +
				"       subbus ops get|wait|cancel <id>",
			summary: "follow long operations (begun with --no-wait): list, show, wait printing progress, cancel",
			flags:   []string{"host", "event-filters", "state"}, minArgs: 1, maxArgs: 2, run: cmdOps},
		{name: "workers", top: true, usage: "workers", summary: "list workers with drivers, capabilities, health and version",
			run: cmdWorkers},
		{name: "admin", top: true,
			usage: "admin creds --hosts H1,H2,… --out DIR [--cluster-drivers D,…] [--client NAME:ROLE[:drivers=…][:hosts=…]]... [--env-keys] [--url URL]\n" +
				"       subbus admin certs --names N1,N2,… --out DIR [--client-certs NAME,…] [--validity D]",
			summary: "generate a fleet's NATS identities and permissions, or its TLS certificates (docs/security.md)",
			flags:   []string{"admin-creds"}, minArgs: 1, maxArgs: 1, run: cmdAdmin},
		{name: "version", top: true, usage: "version", summary: "print subbus's version", run: cmdVersion},
		{name: "help", top: true, usage: "help", summary: "show this help", maxArgs: -1},
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

// findCommand maps the command words to a command, its positional
// arguments and the driver.
func findCommand(words []string) (*command, []string, string, error) {
	for _, c := range commands {
		if c.top && c.name == words[0] {
			return c, words[1:], "", nil
		}
	}
	driver := words[0]
	if drivers.ValidDriverName(driver) != nil {
		return nil, nil, "", usagef("unknown command or invalid driver name %q", driver)
	}
	if len(words) < 2 {
		return nil, nil, "", usagef("missing command after driver %q (list, get, create, …)", driver)
	}
	name, pos := words[1], words[2:]
	if groups[name] {
		if len(words) < 3 {
			return nil, nil, "", usagef("%s: missing sub-command", name)
		}
		name, pos = name+" "+words[2], words[3:]
	}
	for _, c := range commands {
		if !c.top && c.name == name {
			return c, pos, driver, nil
		}
	}
	return nil, nil, "", usagef("unknown command %q", name)
}

func printHelp(w io.Writer) {
	fmt.Fprintf(w, "subbus — manage instances through the subbus workers over NATS\n\nUsage:\n")
	for _, c := range commands {
		fmt.Fprintf(w, "  subbus %s\n", c.usage)
	}
	fmt.Fprint(w, `
Every command takes --json (machine-readable output) and the NATS
connection flags: --server/-s URL (NATS_URL, default `+"nats://127.0.0.1:4222"+`),
--creds (NATS_CREDS), --nkey (NATS_NKEY), --user/--password (NATS_USER,
NATS_PASSWORD), --token (NATS_TOKEN), --tlscert/--tlskey/--tlsca (NATS_CERT,
NATS_KEY, NATS_CA), --context (NATS_CONTEXT), --no-context, --inbox-prefix,
--connect-timeout; and --timeout D (how long to wait for the reply).
Flags may come before or after the arguments. See docs/cli.md.
`)
}

func printCommandHelp(w io.Writer, c *command, fs *flag.FlagSet) {
	fmt.Fprintf(w, "subbus %s\n\n%s\n\nFlags:\n", c.usage, c.summary)
	fs.SetOutput(w)
	fs.PrintDefaults()
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}
