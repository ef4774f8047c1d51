package supervisor

import (
	"bufio"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/subbus/subbus/internal/drivers"
)

// A program file written by this driver is
//
//	; subbus: managed by the subbus supervisor driver; do not edit
//	; subbus-spec: <base64url JSON of the template and creation time>
//	[program:<name>]
//	command=…
//	…
//
// The first line is the marker that tells this driver's files from others;
// the spec line lets clone, get and delete recover the template without
// parsing supervisor's syntax back.
const (
	markerLine = "; subbus: managed by the subbus supervisor driver; do not edit"
	specPrefix = "; subbus-spec: "
)

// spec is what the spec line records.
type spec struct {
	Template drivers.InstanceTemplate `json:"template"`
	Created  time.Time                `json:"created"`
}

// programSettings are the driver-wide values written into every program.
type programSettings struct {
	LogDir       string
	Autorestart  string
	StopSignal   string
	StopWaitSecs int
	StartSecs    int
	StartRetries int
}

// hereMacro is replaced by supervisord in every value of its
// configuration by plain text substitution, before %-expansion.
const hereMacro = "%(here)s"

var envKeyPattern = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// checkText rejects what could break out of one line of an INI value:
// control characters (newlines, NUL, C1 controls), Unicode line
// separators and invalid UTF-8.
func checkText(field, v string) error {
	if !utf8.ValidString(v) {
		return drivers.Errorf(drivers.InvalidArgument, "%s: not valid UTF-8", field)
	}
	for _, r := range v {
		if unicode.IsControl(r) || r == '\u2028' || r == '\u2029' {
			return drivers.Errorf(drivers.InvalidArgument, "%s: control character %U cannot be written into a supervisor program file", field, r)
		}
	}
	return nil
}

// checkPlain checks a value written as is (after %-escaping): supervisor's
// INI parser strips surrounding whitespace and cuts the value at ";" or
// "#" preceded by whitespace (an inline comment), so those are refused.
func checkPlain(field, v string) error {
	if err := checkText(field, v); err != nil {
		return err
	}
	if strings.TrimSpace(v) != v {
		return drivers.Errorf(drivers.InvalidArgument, "%s: leading or trailing whitespace cannot be written into a supervisor program file", field)
	}
	if inlineComment(v) {
		return drivers.Errorf(drivers.InvalidArgument, "%s: %q: ';' or '#' after whitespace would start a comment in supervisor's configuration", field, v)
	}
	if strings.Contains(v, hereMacro) {
		return drivers.Errorf(drivers.InvalidArgument, "%s: supervisord replaces %s in every value, even escaped", field, hereMacro)
	}
	return nil
}

// inlineComment reports whether v has ';' or '#' right after whitespace.
func inlineComment(v string) bool {
	prevSpace := false
	for _, r := range v {
		if (r == ';' || r == '#') && prevSpace {
			return true
		}
		prevSpace = unicode.IsSpace(r)
	}
	return false
}

// escapePercent doubles '%': supervisord expands %(name)s in every value.
func escapePercent(v string) string { return strings.ReplaceAll(v, "%", "%%") }

// quoteArg quotes one argument for supervisord's command line, which is
// split with Python's shlex.split (POSIX rules) after the INI parser has
// read it. Runs of ordinary characters are single-quoted; a quote, ';' or
// '#' is written backslash-escaped outside the quotes, so neither the
// shell-like split nor the INI parser's inline comments can see them.
func quoteArg(arg string) string {
	if arg == "" {
		return "''"
	}
	var b strings.Builder
	open := false
	prev := rune(0)
	for _, r := range arg {
		if r == '(' && prev == '%' && open {
			// supervisord replaces the text %(here)s everywhere before
			// any other expansion, even in %%(here)s: keep '%' and '('
			// apart with an empty pair of quotes.
			b.WriteString("''")
		}
		prev = r
		switch r {
		case '\'', ';', '#':
			if open {
				b.WriteByte('\'')
				open = false
			}
			b.WriteByte('\\')
			b.WriteRune(r)
		default:
			if !open {
				b.WriteByte('\'')
				open = true
			}
			b.WriteRune(r)
		}
	}
	if open {
		b.WriteByte('\'')
	}
	return b.String()
}

// quoteEnvValue quotes a value for supervisord's environment= line, which
// is split with Python's shlex in non-POSIX mode: quotes cannot be escaped
// and quote characters are stripped from both ends of each value. So a
// value is wrapped in whichever quote it does not contain; values that
// contain both, or start or end with a quote, cannot be represented.
func quoteEnvValue(key, v string) (string, error) {
	field := "environment." + key
	if err := checkText(field, v); err != nil {
		return "", err
	}
	if inlineComment(v) {
		return "", drivers.Errorf(drivers.InvalidArgument, "%s: ';' or '#' after whitespace would start a comment in supervisor's configuration", field)
	}
	if strings.Contains(v, hereMacro) {
		return "", drivers.Errorf(drivers.InvalidArgument, "%s: supervisord replaces %s in every value, even escaped", field, hereMacro)
	}
	if strings.HasPrefix(v, `"`) || strings.HasPrefix(v, `'`) || strings.HasSuffix(v, `"`) || strings.HasSuffix(v, `'`) {
		return "", drivers.Errorf(drivers.InvalidArgument, "%s: supervisor strips quotes from both ends of environment values, so a value cannot start or end with a quote", field)
	}
	switch {
	case !strings.Contains(v, `"`):
		return `"` + v + `"`, nil
	case !strings.Contains(v, `'`):
		return `'` + v + `'`, nil
	}
	return "", drivers.Errorf(drivers.InvalidArgument, "%s: supervisor's environment syntax cannot hold a value with both ' and \" quotes", field)
}

// argv returns the command line of a template: Command, or BaseImage alone.
func argv(t drivers.InstanceTemplate) []string {
	if len(t.Command) > 0 {
		return t.Command
	}
	if t.BaseImage != "" {
		return []string{t.BaseImage}
	}
	return nil
}

// renderProgram returns the program file for a template, or an
// InvalidArgument error naming the field that cannot be written safely.
func renderProgram(t drivers.InstanceTemplate, created time.Time, s programSettings) ([]byte, error) {
	if err := drivers.ValidateName("name", t.Name); err != nil {
		return nil, err
	}
	args := argv(t)
	if len(args) == 0 || args[0] == "" {
		return nil, drivers.Errorf(drivers.InvalidArgument, "command: empty (give base_image or command)")
	}
	if !t.Resources.IsZero() {
		return nil, drivers.Unsupportedf("resources: supervisor cannot limit resources (see docs/supervisor.md)")
	}
	if len(t.Networks) > 0 {
		return nil, drivers.Unsupportedf("networks: supervisor programs run in the host's network")
	}
	if len(t.Volumes) > 0 {
		return nil, drivers.Unsupportedf("volumes: supervisor programs see the host's filesystem")
	}
	quoted := make([]string, len(args))
	for i, a := range args {
		if err := checkText(fmt.Sprintf("command[%d]", i), a); err != nil {
			return nil, err
		}
		quoted[i] = quoteArg(a)
	}
	var env []string
	for _, k := range slices.Sorted(maps.Keys(t.Environment)) {
		if !envKeyPattern.MatchString(k) {
			return nil, drivers.Errorf(drivers.InvalidArgument, "environment: key %q must match %s", k, envKeyPattern)
		}
		q, err := quoteEnvValue(k, t.Environment[k])
		if err != nil {
			return nil, err
		}
		env = append(env, k+"="+q)
	}
	if t.WorkDir != "" {
		if err := checkPlain("workdir", t.WorkDir); err != nil {
			return nil, err
		}
		if !strings.HasPrefix(t.WorkDir, "/") {
			return nil, drivers.Errorf(drivers.InvalidArgument, "workdir: %q is not an absolute path", t.WorkDir)
		}
	}
	if t.User != "" {
		if err := checkPlain("user", t.User); err != nil {
			return nil, err
		}
		if strings.ContainsFunc(t.User, unicode.IsSpace) {
			return nil, drivers.Errorf(drivers.InvalidArgument, "user: %q contains whitespace", t.User)
		}
	}
	for k, v := range t.Metadata {
		// Metadata only travels inside the base64 spec line, but keep it
		// printable so it reads back the same everywhere.
		if err := checkText("metadata."+k, k+v); err != nil {
			return nil, err
		}
	}
	sp, err := json.Marshal(spec{Template: t, Created: created.UTC()})
	if err != nil {
		return nil, fmt.Errorf("encoding the spec: %w", err)
	}

	var b strings.Builder
	line := func(k, v string) { b.WriteString(k + "=" + v + "\n") }
	b.WriteString(markerLine + "\n")
	b.WriteString(specPrefix + base64.RawURLEncoding.EncodeToString(sp) + "\n")
	b.WriteString("[program:" + t.Name + "]\n")
	line("command", escapePercent(strings.Join(quoted, " ")))
	if len(env) > 0 {
		line("environment", escapePercent(strings.Join(env, ",")))
	}
	if t.WorkDir != "" {
		line("directory", escapePercent(t.WorkDir))
	}
	if t.User != "" {
		line("user", escapePercent(t.User))
	}
	line("autostart", "false")
	line("autorestart", s.Autorestart)
	line("startsecs", strconv.Itoa(s.StartSecs))
	line("startretries", strconv.Itoa(s.StartRetries))
	line("stopsignal", s.StopSignal)
	line("stopwaitsecs", strconv.Itoa(s.StopWaitSecs))
	// Signals go to the whole process group, so a shell's children stop too.
	line("stopasgroup", "true")
	line("killasgroup", "true")
	out, errf := logFiles(s.LogDir, t.Name)
	line("stdout_logfile", escapePercent(out))
	line("stderr_logfile", escapePercent(errf))
	return []byte(b.String()), nil
}

// logFiles are the log paths of a program created by this driver.
func logFiles(dir, name string) (stdout, stderr string) {
	dir = strings.TrimRight(dir, "/")
	return dir + "/" + name + ".out.log", dir + "/" + name + ".err.log"
}

// parseSpec reads the marker and spec lines of a program file. ok is false
// when the file was not written by this driver.
func parseSpec(data []byte) (sp spec, ok bool, err error) {
	sc := bufio.NewScanner(strings.NewReader(string(data)))
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	if !sc.Scan() || sc.Text() != markerLine {
		return spec{}, false, nil
	}
	if !sc.Scan() || !strings.HasPrefix(sc.Text(), specPrefix) {
		return spec{}, true, fmt.Errorf("program file has the marker but no spec line")
	}
	raw, err := base64.RawURLEncoding.DecodeString(strings.TrimPrefix(sc.Text(), specPrefix))
	if err != nil {
		return spec{}, true, fmt.Errorf("program file spec: %w", err)
	}
	if err := json.Unmarshal(raw, &sp); err != nil {
		return spec{}, true, fmt.Errorf("program file spec: %w", err)
	}
	return sp, true, nil
}
