package cli

import (
	"context"
	"flag"
	"fmt"
	"io"
	"regexp"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/internal/natsconn"
)

// builtinDrivers are the drivers compiled into the worker (registry.Names;
// a test keeps the two equal). The CLI does not import the registry: that
// would link every driver's client library into subbus.
var builtinDrivers = []string{"docker", "libvirt", "lxc", "process", "proxmox", "supervisor"}

// ---- finding a command, with typo help ----

// findCommand maps the command words to a command, its positional
// arguments and the driver. Unknown words are usage errors that suggest
// the nearest known word.
func findCommand(words []string) (*command, []string, string, error) {
	for _, c := range commands {
		if c.top && c.name == words[0] {
			return c, words[1:], "", nil
		}
	}
	driver := words[0]
	if drivers.ValidDriverName(driver) != nil {
		return nil, nil, "", usagef("unknown command or invalid driver name %q%s", driver,
			didYouMean(driver, append(topNames(), builtinDrivers...)))
	}
	if len(words) < 2 && !slices.Contains(builtinDrivers, driver) {
		if s := nearest(driver, topNames()); s != "" {
			return nil, nil, "", usagef("unknown command %q; did you mean %q?", driver, s)
		}
	}
	if len(words) < 2 {
		return nil, nil, "", usagef("missing command after driver %q (%s); run 'subbus %s --help'",
			driver, strings.Join(driverVerbs(), ", "), driver)
	}
	name, pos := words[1], words[2:]
	if groups[name] {
		if len(words) < 3 {
			return nil, nil, "", usagef("%s: missing sub-command (%s); run 'subbus %s %s --help'",
				name, strings.Join(groupVerbs(name), ", "), driver, name)
		}
		name, pos = name+" "+words[2], words[3:]
		for _, c := range commands {
			if !c.top && c.name == name {
				return c, pos, driver, nil
			}
		}
		return nil, nil, "", usagef("unknown command %q%s", name, didYouMean(words[2], groupVerbs(words[1])))
	}
	for _, c := range commands {
		if !c.top && c.name == name {
			return c, pos, driver, nil
		}
	}
	return nil, nil, "", usagef("unknown command %q for driver %s%s", name, driver, didYouMean(name, driverVerbs()))
}

// topNames lists the visible top-level commands.
func topNames() []string {
	var out []string
	for _, c := range commands {
		if c.top && !c.hidden {
			out = append(out, c.name)
		}
	}
	return out
}

// driverVerbs lists the first words of the driver commands, in table order.
func driverVerbs() []string {
	var out []string
	for _, c := range commands {
		if c.top {
			continue
		}
		w, _, _ := strings.Cut(c.name, " ")
		if !slices.Contains(out, w) {
			out = append(out, w)
		}
	}
	return out
}

// groupVerbs lists the sub-verbs of group ("create", "restore", … of snapshot).
func groupVerbs(group string) []string {
	var out []string
	for _, c := range commands {
		if g, v, ok := strings.Cut(c.name, " "); ok && !c.top && g == group {
			out = append(out, v)
		}
	}
	return out
}

// didYouMean returns `; did you mean "x"?` for the nearest candidate
// within a small edit distance (or sharing a prefix), else "".
func didYouMean(word string, candidates []string) string {
	if s := nearest(word, candidates); s != "" {
		return fmt.Sprintf("; did you mean %q?", s)
	}
	return ""
}

// nearest returns the candidate nearest to word, "" when none is close.
func nearest(word string, candidates []string) string {
	best, bestD := "", 1<<30
	for _, c := range candidates {
		d := editDistance(strings.ToLower(word), strings.ToLower(c))
		if d < bestD {
			best, bestD = c, d
		}
	}
	limit := 2
	if len(word) <= 3 {
		limit = 1
	}
	if bestD <= limit {
		return best
	}
	for _, c := range candidates {
		if len(word) >= 3 && strings.HasPrefix(c, word) {
			return c
		}
	}
	return ""
}

// editDistance is the Damerau–Levenshtein distance (optimal string
// alignment): a swap of two neighbours counts as one edit.
func editDistance(a, b string) int {
	ra, rb := []rune(a), []rune(b)
	d := make([][]int, len(ra)+1)
	for i := range d {
		d[i] = make([]int, len(rb)+1)
		d[i][0] = i
	}
	for j := range rb {
		d[0][j+1] = j + 1
	}
	for i := 1; i <= len(ra); i++ {
		for j := 1; j <= len(rb); j++ {
			cost := 1
			if ra[i-1] == rb[j-1] {
				cost = 0
			}
			d[i][j] = min(d[i-1][j]+1, d[i][j-1]+1, d[i-1][j-1]+cost)
			if i > 1 && j > 1 && ra[i-1] == rb[j-2] && ra[i-2] == rb[j-1] {
				d[i][j] = min(d[i][j], d[i-2][j-2]+1)
			}
		}
	}
	return d[len(ra)][len(rb)]
}

// checkDriver refuses a driver name that is neither built in nor served
// by the fleet, listing what the fleet serves (asked with a short
// timeout; the built-in names when no worker answers). A built-in name
// passes without asking: a fleet without it answers no_worker as before.
func checkDriver(e *env, driver string) error {
	if driver == "" || slices.Contains(builtinDrivers, driver) {
		return nil
	}
	served := fleetDrivers(e, 1500*time.Millisecond)
	if slices.Contains(served, driver) {
		return nil
	}
	what := "the fleet serves"
	if len(served) == 0 {
		served, what = builtinDrivers, "no worker answered; the built-in drivers are"
	}
	return usagef("unknown driver %q (%s: %s)%s", driver, what, strings.Join(served, ", "), didYouMean(driver, served))
}

// fleetDrivers asks the workers (micro discovery) which drivers they
// serve, waiting at most wait; nil when none answers.
func fleetDrivers(e *env, wait time.Duration) []string {
	cl, err := e.client()
	if err != nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(e.ctx, wait)
	defer cancel()
	workers, err := cl.Workers(ctx)
	if err != nil {
		return nil
	}
	var out []string
	for _, w := range workers {
		for _, d := range w.Drivers {
			if !slices.Contains(out, d) {
				out = append(out, d)
			}
		}
	}
	sort.Strings(out)
	return out
}

// checkFlags reports the first flag in rest (the arguments before "--")
// that fs does not define, suggesting the nearest one.
func checkFlags(fs *flag.FlagSet, rest []string, where string) error {
	var names []string
	fs.VisitAll(func(f *flag.Flag) { names = append(names, f.Name) })
	for i := 0; i < len(rest); i++ {
		a := rest[i]
		if a == "--" {
			break
		}
		if len(a) < 2 || a[0] != '-' {
			continue
		}
		name, _, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if name == "h" || name == "help" {
			continue
		}
		if f := fs.Lookup(name); f != nil {
			if b, ok := f.Value.(interface{ IsBoolFlag() bool }); !hasValue && (!ok || !b.IsBoolFlag()) {
				i++ // its value, which may start with '-'
			}
			continue
		}
		hint := ""
		if s := nearest(name, names); s != "" {
			hint = "; did you mean " + dashed(s) + "?"
		}
		return usagef("unknown flag %s for 'subbus %s'%s; run 'subbus help %s'", dashed(name), where, hint, where)
	}
	return nil
}

// dashed spells a flag name GNU-style: -x for one letter, --name otherwise.
func dashed(name string) string {
	if len(name) == 1 {
		return "-" + name
	}
	return "--" + name
}

var singleDashFlag = regexp.MustCompile(`(^|[\s:])-([a-z][a-z0-9-]+)\b`)

// gnuFlags rewrites the flag package's "-name" spellings in an error
// message as "--name".
func gnuFlags(msg string) string { return singleDashFlag.ReplaceAllString(msg, "$1--$2") }

// ---- help ----

// globalFlags registers the flags every command takes besides the
// connection flags: --json/-j and --timeout.
func globalFlags(fs *flag.FlagSet, e *env) {
	fs.BoolVar(&e.json, "json", false, "print the machine-readable result (errors too: {\"error\": {code, message, retryable}} on stdout)")
	alias(fs, "j", "json")
	fs.Var(&e.timeoutFlag, "timeout", "wait `D` at most for the reply (30s, 1m, or seconds; default 30s, 5m for create, clone, snapshots)")
}

// flagBlocks returns the help blocks of a command's flags: its own, the
// global ones, and the connection flags.
func flagBlocks(c *command) (own, global, conn *flag.FlagSet) {
	own = flag.NewFlagSet("own", flag.ContinueOnError)
	o := newOpts()
	for _, name := range c.flags {
		flagDefs[name](own, o)
	}
	global = flag.NewFlagSet("global", flag.ContinueOnError)
	e := &env{}
	e.timeoutFlag.d = &e.timeout
	globalFlags(global, e)
	conn = flag.NewFlagSet("conn", flag.ContinueOnError)
	var co natsconn.Options
	co.RegisterFlags(conn)
	return own, global, conn
}

// printFlags prints fs GNU-style, every spelling of a flag on one line:
// "  -f, --file FILE   create from …".
func printFlags(w io.Writer, fs *flag.FlagSet) {
	tw := tabwriter.NewWriter(w, 0, 4, 3, ' ', 0)
	fs.VisitAll(func(f *flag.Flag) {
		if p, ok := flagAliases[f.Name]; ok && fs.Lookup(p) != nil {
			return
		}
		if strings.HasPrefix(f.Usage, "shorthand for ") {
			return
		}
		var short, long []string
		for a, p := range flagAliases {
			if p == f.Name && fs.Lookup(a) != nil {
				if len(a) == 1 {
					short = append(short, "-"+a)
				} else {
					long = append(long, "--"+a)
				}
			}
		}
		sort.Strings(short)
		sort.Strings(long)
		names := append(short, dashed(f.Name))
		names = append(names, long...)
		arg, usage := flagArg(f)
		spell := strings.Join(names, ", ")
		if len(short) == 0 && len(f.Name) > 1 {
			spell = "    " + spell
		}
		if arg != "" {
			spell += " " + arg
		}
		fmt.Fprintf(tw, "  %s\t%s\n", spell, usage)
	})
	_ = tw.Flush()
}

func visible(c *command) bool { return !c.hidden }

// connArgs names the values of natsconn's flags in help.
var connArgs = map[string]string{
	"server": "URL", "creds": "FILE", "nkey": "FILE", "user": "USER", "password": "PASSWORD", "token": "TOKEN",
	"tlscert": "FILE", "tlskey": "FILE", "tlsca": "FILE", "context": "NAME", "inbox-prefix": "PREFIX", "connect-timeout": "D",
}

// flagArg returns the placeholder of f's value ("" for a boolean) and its usage text.
func flagArg(f *flag.Flag) (string, string) {
	arg, usage := flag.UnquoteUsage(f)
	if a, ok := connArgs[f.Name]; ok {
		arg = a
	}
	if b, ok := f.Value.(interface{ IsBoolFlag() bool }); ok && b.IsBoolFlag() {
		arg = ""
	}
	return arg, usage
}

// printOverview is `subbus --help`.
func printOverview(w io.Writer) {
	fmt.Fprint(w, `subbus — manage instances (processes, containers, VMs, programs) through the subbus workers over NATS

Usage:
  subbus <driver> <command> [arguments] [flags] [-- COMMAND ARG...]
  subbus <command> [flags]

Drivers: `+strings.Join(builtinDrivers, ", ")+` ('subbus workers' shows what the fleet serves)

Driver commands:
`)
	tw := tabwriter.NewWriter(w, 0, 4, 3, ' ', 0)
	for _, c := range commands {
		if !c.top {
			fmt.Fprintf(tw, "  %s\t%s\n", c.name, c.summary)
		}
	}
	_ = tw.Flush()
	fmt.Fprint(w, "\nCommands:\n")
	tw = tabwriter.NewWriter(w, 0, 4, 3, ' ', 0)
	for _, c := range commands {
		if c.top && visible(c) {
			fmt.Fprintf(tw, "  %s\t%s\n", c.name, c.summary)
		}
	}
	_ = tw.Flush()
	_, global, conn := flagBlocks(&command{})
	fmt.Fprint(w, "\nGlobal flags:\n")
	var help, ver bool
	global.BoolVar(&help, "help", false, "show help (also: subbus help <command>)")
	global.BoolVar(&ver, "version", false, "print the version")
	global.BoolVar(&help, "h", false, "same as --help")
	printFlags(w, global)
	fmt.Fprint(w, "\nConnection flags (as natscli; a flag beats its environment variable, both beat the nats context):\n")
	printFlags(w, conn)
	fmt.Fprint(w, `
Flags may come before or after the arguments. Run 'subbus help <command>'
or 'subbus <driver> <command> --help' for a command's flags and an example.
Reference: docs/cli.md, or 'subbus man'.
`)
}

// printDriverHelp is `subbus <driver> --help`.
func printDriverHelp(w io.Writer, driver string) {
	fmt.Fprintf(w, "Usage:\n  subbus %s <command> [arguments] [flags]\n\nCommands:\n", driver)
	tw := tabwriter.NewWriter(w, 0, 4, 3, ' ', 0)
	for _, c := range commands {
		if !c.top {
			fmt.Fprintf(tw, "  %s\t%s\n", c.name, c.summary)
		}
	}
	_ = tw.Flush()
	fmt.Fprintf(w, "\nRun 'subbus %s <command> --help' for a command's flags.\n", driver)
}

// printGroupHelp is `subbus <driver> snapshot --help`.
func printGroupHelp(w io.Writer, driver, group string) {
	fmt.Fprintf(w, "Usage:\n  subbus %s %s <command> [arguments] [flags]\n\nCommands:\n", driver, group)
	tw := tabwriter.NewWriter(w, 0, 4, 3, ' ', 0)
	for _, c := range commands {
		if g, _, ok := strings.Cut(c.name, " "); ok && !c.top && g == group {
			fmt.Fprintf(tw, "  %s\t%s\n", c.name, c.summary)
		}
	}
	_ = tw.Flush()
	fmt.Fprintf(w, "\nRun 'subbus %s %s <command> --help' for a command's flags.\n", driver, group)
}

// printCommandHelp is `subbus <driver> <command> --help` and `subbus help <command>`.
func printCommandHelp(w io.Writer, c *command, driver string) {
	usage, example := c.usage, c.example
	if driver != "" && !c.top {
		usage = strings.ReplaceAll(usage, "<driver>", driver)
	}
	fmt.Fprintf(w, "Usage:\n  subbus %s\n\n%s\n", usage, c.summary)
	own, global, conn := flagBlocks(c)
	if n := countFlags(own); n > 0 {
		fmt.Fprint(w, "\nFlags:\n")
		printFlags(w, own)
	}
	fmt.Fprint(w, "\nGlobal flags:\n")
	printFlags(w, global)
	fmt.Fprint(w, "\nConnection flags:\n")
	printFlags(w, conn)
	if example != "" {
		fmt.Fprintf(w, "\nExample:\n  subbus %s\n", example)
	}
}

func countFlags(fs *flag.FlagSet) int {
	n := 0
	fs.VisitAll(func(*flag.Flag) { n++ })
	return n
}

// helpFor prints the help the words ask for: none, a command, a driver,
// a group, a driver command (with or without the driver).
func helpFor(e *env, words []string) error {
	w := e.stdout
	if len(words) == 0 {
		printOverview(w)
		return nil
	}
	for _, c := range commands {
		if c.top && c.name == words[0] && visible(c) {
			printCommandHelp(w, c, "")
			return nil
		}
	}
	driver, rest := "<driver>", words
	if !slices.Contains(driverVerbs(), words[0]) {
		if drivers.ValidDriverName(words[0]) != nil {
			return usagef("no help for %q%s", words[0], didYouMean(words[0], append(topNames(), append(driverVerbs(), builtinDrivers...)...)))
		}
		driver, rest = words[0], words[1:]
	}
	if len(rest) == 0 {
		printDriverHelp(w, driver)
		return nil
	}
	name := rest[0]
	if groups[name] {
		if len(rest) == 1 || !slices.Contains(groupVerbs(name), rest[1]) {
			printGroupHelp(w, driver, name)
			return nil
		}
		name += " " + rest[1]
	}
	for _, c := range commands {
		if !c.top && c.name == name {
			printCommandHelp(w, c, driver)
			return nil
		}
	}
	return usagef("unknown command %q%s", name, didYouMean(name, driverVerbs()))
}
