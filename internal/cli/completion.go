package cli

import (
	"context"
	"flag"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/internal/natsconn"
	"github.com/subbus/subbus/internal/version"
	"github.com/subbus/subbus/messages"
)

// Shell completion: the scripts call `subbus __complete WORD...` with the
// words typed so far (the last one is the word being completed, maybe
// empty) and offer the lines it prints. Candidates come from the command
// table, and from the fleet where a worker answers quickly: drivers
// (discovery) and instance names (a live list), each asked with
// completeWait; without an answer, the built-in driver names and no
// instances.

const completeWait = 1500 * time.Millisecond

var completionScripts = map[string]string{
	"bash": `# bash completion for subbus; load with: source <(subbus completion bash)
_subbus() {
    local IFS=$'\n'
    COMPREPLY=( $(subbus __complete "${COMP_WORDS[@]:1:COMP_CWORD}" 2>/dev/null) )
}
complete -o default -F _subbus subbus
`,
	"zsh": `#compdef subbus
# zsh completion for subbus; load with: source <(subbus completion zsh) (after compinit),
# or save as _subbus in a directory of $fpath.
_subbus() {
    local -a cands
    cands=("${(@f)$(subbus __complete "${(@)words[2,CURRENT]}" 2>/dev/null)}")
    compadd -- ${cands:#}
}
if [ "$funcstack[1]" = "_subbus" ]; then
    _subbus "$@"
else
    compdef _subbus subbus
fi
`,
	"fish": `# fish completion for subbus; load with: subbus completion fish | source
function __subbus_complete
    set -l tokens (commandline -opc) (commandline -ct)
    subbus __complete $tokens[2..-1] 2>/dev/null
end
complete -c subbus -f -a '(__subbus_complete)'
`,
}

func cmdCompletion(e *env, c *invocation) error {
	script, ok := completionScripts[c.args[0]]
	if !ok {
		return usagef("completion: unknown shell %q (bash, zsh, fish)%s", c.args[0], didYouMean(c.args[0], []string{"bash", "zsh", "fish"}))
	}
	_, err := io.WriteString(e.stdout, script)
	return err
}

// cmdComplete prints the candidates for the last of words, one per line.
func cmdComplete(e *env, words []string) error {
	if len(words) == 0 {
		words = []string{""}
	}
	cur, typed := words[len(words)-1], words[:len(words)-1]
	// Connection flags typed so far say where to ask.
	e.conn = natsconn.FromEnv()
	connFS := flag.NewFlagSet("conn", flag.ContinueOnError)
	e.conn.RegisterFlags(connFS)
	valued := valueFlags()
	var pos []string
	prevFlag := ""
	for i := 0; i < len(typed); i++ {
		a := typed[i]
		if a == "--" {
			pos = nil // after --: a command line of its own; nothing to offer
			prevFlag = "--"
			break
		}
		if len(a) > 1 && a[0] == '-' {
			name, val, hasVal := strings.Cut(strings.TrimLeft(a, "-"), "=")
			prevFlag = ""
			if !hasVal && valued[name] {
				if i+1 < len(typed) {
					i++
					val, hasVal = typed[i], true
				} else {
					prevFlag = name
				}
			}
			if hasVal && connFS.Lookup(name) != nil {
				_ = connFS.Set(name, val)
			}
			continue
		}
		prevFlag = ""
		pos = append(pos, a)
	}
	if prevFlag == "--" {
		return nil
	}
	var cands []string
	c, args, driver := completeCommand(pos)
	switch {
	case prevFlag != "":
		cands = completeFlagValue(e, prevFlag, driver)
	case strings.HasPrefix(cur, "-"):
		cands = completeFlags(c)
	case len(pos) == 0:
		cands = append(topNames(), completeDrivers(e)...)
	case c != nil && c.top:
		switch c.name {
		case "completion":
			if len(args) == 0 {
				cands = []string{"bash", "zsh", "fish"}
			}
		case "help":
			if len(args) == 0 {
				cands = append(topNames(), driverVerbs()...)
			} else if groups[args[len(args)-1]] {
				cands = groupVerbs(args[len(args)-1])
			}
		case "admin":
			if len(args) == 0 {
				cands = []string{"creds", "certs"}
			}
		}
	case c == nil && len(pos) == 1:
		cands = driverVerbs()
	case c == nil && len(pos) == 2 && groups[pos[1]]:
		cands = groupVerbs(pos[1])
	case c != nil && c.instanceArg && len(args) == 0:
		cands = completeInstances(e, driver)
	}
	for _, s := range cands {
		if strings.HasPrefix(s, cur) {
			fmt.Fprintln(e.stdout, s)
		}
	}
	return nil
}

// completeCommand finds the command the positional words name, if any,
// with its arguments so far and the driver.
func completeCommand(pos []string) (*command, []string, string) {
	if len(pos) == 0 {
		return nil, nil, ""
	}
	c, args, driver, err := findCommand(pos)
	if err != nil {
		return nil, nil, pos[0]
	}
	return c, args, driver
}

// completeFlags lists every spelling of the flags c takes (global and
// connection flags too).
func completeFlags(c *command) []string {
	if c == nil {
		c = &command{}
	}
	own, global, conn := flagBlocks(c)
	var out []string
	for _, fs := range []*flag.FlagSet{own, global, conn} {
		fs.VisitAll(func(f *flag.Flag) { out = append(out, dashed(f.Name)) })
	}
	out = append(out, "--help")
	sort.Strings(out)
	return slices.Compact(out)
}

func completeFlagValue(e *env, name, driver string) []string {
	switch name {
	case "state":
		var out []string
		for _, s := range drivers.States() {
			out = append(out, string(s))
		}
		return out
	case "driver":
		return completeDrivers(e)
	case "type":
		return []string{"created", "started", "stopped", "deleted", "restarted", "failed", "snapshot_created",
			"snapshot_restored", "snapshot_deleted", "cloned", "limits_changed", "network_attached", "network_detached",
			"appeared", "vanished", "state_changed"}
	case "instance":
		return completeInstances(e, driver)
	case "host":
		cl, err := e.client()
		if err != nil {
			return nil
		}
		ctx, cancel := context.WithTimeout(e.ctx, completeWait)
		defer cancel()
		ws, _ := cl.Workers(ctx)
		var out []string
		for _, w := range ws {
			out = append(out, w.Host)
		}
		return out
	}
	return nil
}

// completeDrivers: the drivers the fleet serves, else the built-in ones.
func completeDrivers(e *env) []string {
	if d := fleetDrivers(e, completeWait); len(d) > 0 {
		return d
	}
	return builtinDrivers
}

// completeInstances asks for a live list of driver's instances.
func completeInstances(e *env, driver string) []string {
	if driver == "" {
		return nil
	}
	cl, err := e.client()
	if err != nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(e.ctx, completeWait)
	defer cancel()
	var list []messages.Instance
	if err := cl.Do(ctx, driver, "", messages.OpList, nil, &list); err != nil {
		return nil
	}
	out := make([]string, 0, len(list))
	for _, i := range list {
		out = append(out, i.Name)
	}
	sort.Strings(out)
	return slices.Compact(out)
}

// ---- man page ----

// exitStatuses documents the exit statuses (docs/cli.md, the man page).
var exitStatuses = []struct {
	status int
	code   string
	text   string
}{
	{ExitOK, "", "success"},
	{ExitInternal, "internal", "a bug, or an error nobody could classify"},
	{ExitUsage, "usage", "the command line is wrong; nothing was sent"},
	{ExitInvalidArgument, "invalid_argument", "the worker refused the request as malformed; nothing was changed"},
	{ExitNotFound, "not_found", "the instance, snapshot, network or image does not exist"},
	{ExitAlreadyExists, "already_exists", "create or clone of a name that is taken"},
	{ExitConflict, "conflict", "wrong state, or busy with another change"},
	{ExitPermissionDenied, "permission_denied", "the substrate or the NATS server refused the credentials"},
	{ExitUnsupported, "unsupported", "the driver cannot do this"},
	{ExitUnavailable, "unavailable", "the substrate or NATS is unreachable, or health found it unhealthy"},
	{ExitTimeout, "timeout", "the worker's deadline passed"},
	{ExitNoWorker, "no_worker", "no worker serves the subject"},
	{ExitNoReply, "no_reply", "no reply came in time; the worker may still be doing it"},
	{ExitExecFailed, "", "exec only: subbus could not run the command or get its status"},
	{ExitInterrupted, "interrupted", "interrupted while waiting"},
}

// roff escapes s for a man page line.
func roff(s string) string {
	s = strings.ReplaceAll(s, `\`, `\e`)
	s = strings.ReplaceAll(s, "-", `\-`)
	if strings.HasPrefix(s, ".") || strings.HasPrefix(s, "'") {
		s = `\&` + s
	}
	var b strings.Builder
	for _, r := range s {
		if r > 127 {
			fmt.Fprintf(&b, `\[u%04X]`, r) // groff's named Unicode glyph
			continue
		}
		b.WriteRune(r)
	}
	return b.String()
}

func manFlags(w io.Writer, fs *flag.FlagSet) {
	fs.VisitAll(func(f *flag.Flag) {
		if p, ok := flagAliases[f.Name]; ok && fs.Lookup(p) != nil {
			return
		}
		if strings.HasPrefix(f.Usage, "shorthand for ") {
			return
		}
		names := []string{}
		for a, p := range flagAliases {
			if p == f.Name && fs.Lookup(a) != nil {
				names = append(names, dashed(a))
			}
		}
		sort.Slice(names, func(i, j int) bool {
			return len(names[i]) < len(names[j]) || (len(names[i]) == len(names[j]) && names[i] < names[j])
		})
		names = append([]string{dashed(f.Name)}, names...)
		arg, usage := flagArg(f)
		spell := `\fB` + roff(strings.Join(names, ", ")) + `\fR`
		if arg != "" {
			spell += ` \fI` + roff(arg) + `\fR`
		}
		fmt.Fprintf(w, ".TP\n%s\n%s\n", spell, roff(usage))
	})
}

func cmdMan(e *env, c *invocation) error {
	w := e.stdout
	fmt.Fprintf(w, ".TH SUBBUS 1 \"\" \"subbus %s\" \"User Commands\"\n", roff(version.String()))
	fmt.Fprint(w, `.SH NAME
subbus \- manage instances (processes, containers, VMs, programs) through the subbus workers over NATS
.SH SYNOPSIS
.B subbus
.I driver command
.RI [ arguments ]
.RI [ flags ]
.RB [ \-\- 
.IR "COMMAND ARG..." ]
.br
.B subbus
.I command
.RI [ flags ]
.SH DESCRIPTION
.B subbus
sends requests to the subbus workers over NATS (subjects substrate.<driver>.<op>) and prints their replies.
Flags may come before or after the arguments; everything after
.B \-\-
is passed through untouched.
Drivers: `+roff(strings.Join(builtinDrivers, ", "))+`.
.SH DRIVER COMMANDS
`)
	for _, c := range commands {
		if c.top {
			continue
		}
		manCommand(w, c)
	}
	fmt.Fprint(w, ".SH COMMANDS\n")
	for _, c := range commands {
		if c.top && visible(c) {
			manCommand(w, c)
		}
	}
	_, global, conn := flagBlocks(&command{})
	fmt.Fprint(w, ".SH GLOBAL FLAGS\n")
	manFlags(w, global)
	fmt.Fprint(w, ".TP\n\\fB\\-h, \\-\\-help\\fR\nshow help\n.TP\n\\fB\\-\\-version\\fR\nprint the version\n")
	fmt.Fprint(w, ".SH CONNECTION FLAGS\nAs natscli: a flag beats its environment variable, and both beat the selected nats context.\n")
	manFlags(w, conn)
	fmt.Fprint(w, ".SH EXIT STATUS\n")
	for _, s := range exitStatuses {
		code := s.code
		if code != "" {
			code = " (" + code + ")"
		}
		fmt.Fprintf(w, ".TP\n\\fB%d\\fR%s\n%s\n", s.status, roff(code), roff(s.text))
	}
	fmt.Fprint(w, `.SH ENVIRONMENT
NATS_URL, NATS_CREDS, NATS_NKEY, NATS_USER, NATS_PASSWORD, NATS_TOKEN, NATS_CERT, NATS_KEY, NATS_CA,
NATS_CONTEXT, NATS_INBOX_PREFIX, NATS_CONNECT_TIMEOUT: see CONNECTION FLAGS.
.SH SEE ALSO
.BR nats (1),
docs/cli.md in the subbus sources.
`)
	return nil
}

func manCommand(w io.Writer, c *command) {
	usage := strings.ReplaceAll(c.usage, "\n       subbus ", "\n.br\nsubbus ")
	lines := strings.Split(usage, "\n")
	for i, l := range lines {
		if l != ".br" {
			lines[i] = roff(l)
		}
	}
	fmt.Fprintf(w, ".SS %s\n.B subbus\n%s\n.PP\n%s\n", roff(c.name), strings.Join(lines, "\n"), roff(c.summary))
	own, _, _ := flagBlocks(c)
	if countFlags(own) > 0 {
		fmt.Fprint(w, ".PP\nFlags:\n.RS\n")
		manFlags(w, own)
		fmt.Fprint(w, ".RE\n")
	}
	if c.example != "" {
		fmt.Fprintf(w, ".PP\nExample:\n.RS\n.nf\nsubbus %s\n.fi\n.RE\n", roff(c.example))
	}
}
