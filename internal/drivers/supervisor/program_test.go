package supervisor

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/subbus/subbus/internal/config"
	"github.com/subbus/subbus/internal/drivers"
)

func testSettings() programSettings {
	return programSettings{LogDir: "/var/log/x", Autorestart: "unexpected", StopSignal: "TERM", StopWaitSecs: 5, StartSecs: 1, StartRetries: 3}
}

func TestRenderRejectsWhatCannotBeWrittenSafely(t *testing.T) {
	base := func() drivers.InstanceTemplate {
		return drivers.InstanceTemplate{Name: "ok", Command: []string{"/bin/true"}}
	}
	cases := []struct {
		desc string
		mod  func(*drivers.InstanceTemplate)
		code drivers.Code
	}{
		{"name with newline and section", func(t *drivers.InstanceTemplate) { t.Name = "x\n[program:evil]" }, drivers.InvalidArgument},
		{"name with bracket", func(t *drivers.InstanceTemplate) { t.Name = "x]" }, drivers.InvalidArgument},
		{"env newline injection", func(t *drivers.InstanceTemplate) {
			t.Environment = map[string]string{"A": "x\n[program:evil]\ncommand=/bin/false"}
		}, drivers.InvalidArgument},
		{"env carriage return", func(t *drivers.InstanceTemplate) { t.Environment = map[string]string{"A": "x\ry"} }, drivers.InvalidArgument},
		{"env NUL", func(t *drivers.InstanceTemplate) { t.Environment = map[string]string{"A": "x\x00y"} }, drivers.InvalidArgument},
		{"env line separator", func(t *drivers.InstanceTemplate) { t.Environment = map[string]string{"A": "x\u2028y"} }, drivers.InvalidArgument},
		{"env C1 next line", func(t *drivers.InstanceTemplate) { t.Environment = map[string]string{"A": "x\u0085y"} }, drivers.InvalidArgument},
		{"env invalid UTF-8", func(t *drivers.InstanceTemplate) { t.Environment = map[string]string{"A": "x\xffy"} }, drivers.InvalidArgument},
		{"env key with space", func(t *drivers.InstanceTemplate) { t.Environment = map[string]string{"A B": "x"} }, drivers.InvalidArgument},
		{"env key with equals", func(t *drivers.InstanceTemplate) { t.Environment = map[string]string{"A=B": "x"} }, drivers.InvalidArgument},
		{"env key with comma", func(t *drivers.InstanceTemplate) { t.Environment = map[string]string{"A,B": "x"} }, drivers.InvalidArgument},
		{"env key with newline", func(t *drivers.InstanceTemplate) { t.Environment = map[string]string{"A\n[program:evil]": "x"} }, drivers.InvalidArgument},
		{"env both quotes", func(t *drivers.InstanceTemplate) { t.Environment = map[string]string{"A": `it's "x"`} }, drivers.InvalidArgument},
		{"env leading quote", func(t *drivers.InstanceTemplate) { t.Environment = map[string]string{"A": `"x`} }, drivers.InvalidArgument},
		{"env here macro", func(t *drivers.InstanceTemplate) { t.Environment = map[string]string{"A": "%(here)s"} }, drivers.InvalidArgument},
		{"workdir here macro", func(t *drivers.InstanceTemplate) { t.WorkDir = "/%(here)s" }, drivers.InvalidArgument},
		{"env inline comment", func(t *drivers.InstanceTemplate) { t.Environment = map[string]string{"A": "x ;y"} }, drivers.InvalidArgument},
		{"command newline", func(t *drivers.InstanceTemplate) { t.Command = []string{"/bin/sh", "-c", "true\n[program:evil]"} }, drivers.InvalidArgument},
		{"command tab", func(t *drivers.InstanceTemplate) { t.Command = []string{"/bin/echo", "a\tb"} }, drivers.InvalidArgument},
		{"empty command", func(t *drivers.InstanceTemplate) { t.Command = nil }, drivers.InvalidArgument},
		{"workdir newline", func(t *drivers.InstanceTemplate) { t.WorkDir = "/tmp\n[program:evil]" }, drivers.InvalidArgument},
		{"workdir relative", func(t *drivers.InstanceTemplate) { t.WorkDir = "tmp" }, drivers.InvalidArgument},
		{"workdir comment", func(t *drivers.InstanceTemplate) { t.WorkDir = "/tmp ;x" }, drivers.InvalidArgument},
		{"user newline", func(t *drivers.InstanceTemplate) { t.User = "root\ncommand=/bin/false" }, drivers.InvalidArgument},
		{"user space", func(t *drivers.InstanceTemplate) { t.User = "a b" }, drivers.InvalidArgument},
		{"resources", func(t *drivers.InstanceTemplate) { t.Resources.MemoryMB = 64 }, drivers.Unsupported},
		{"networks", func(t *drivers.InstanceTemplate) { t.Networks = []drivers.NetworkConfig{{NetworkName: "n"}} }, drivers.Unsupported},
		{"volumes", func(t *drivers.InstanceTemplate) { t.Volumes = []drivers.Volume{{Source: "/a", Target: "/b"}} }, drivers.Unsupported},
	}
	for _, c := range cases {
		t.Run(c.desc, func(t *testing.T) {
			tm := base()
			c.mod(&tm)
			_, err := renderProgram(tm, time.Now(), testSettings())
			if got := classify(err); got != c.code {
				t.Fatalf("renderProgram: %v (code %s), want %s", err, got, c.code)
			}
		})
	}
}

// iniLine is one line of a program file as supervisor's INI parser
// (Python's configparser, inline comments ';' and '#') reads it.
type iniLine struct {
	section    string
	key, value string
}

// parseINI reads data like configparser does and fails the test on any
// line that is not a comment, a section header or key=value, and on
// continuation lines (which configparser would append to a value).
func parseINI(t *testing.T, data string) []iniLine {
	t.Helper()
	var out []iniLine
	section := ""
	for i, l := range strings.Split(strings.TrimSuffix(data, "\n"), "\n") {
		switch {
		case l == "":
		case l[0] == ' ' || l[0] == '\t':
			t.Fatalf("line %d %q is a continuation line", i+1, l)
		case l[0] == ';' || l[0] == '#':
		case l[0] == '[':
			if !strings.HasSuffix(l, "]") {
				t.Fatalf("line %d %q: malformed section", i+1, l)
			}
			section = l[1 : len(l)-1]
			out = append(out, iniLine{section: section})
		default:
			k, v, ok := strings.Cut(l, "=")
			if !ok {
				t.Fatalf("line %d %q: not key=value", i+1, l)
			}
			if inlineComment(v) {
				t.Fatalf("line %d %q: configparser would cut the value at an inline comment", i+1, l)
			}
			out = append(out, iniLine{section: section, key: k, value: v})
		}
	}
	return out
}

// hostileTemplate has values that are legal but full of what supervisor's
// syntax treats specially: quotes, %-interpolation, ';' and '#', section
// headers, commas and equals signs.
func hostileTemplate(name string) (drivers.InstanceTemplate, []string) {
	env := []struct{ k, v string }{
		{"PCT", "%(ENV_HOME)s and %(host_node_name)s 100%"},
		{"SQ", "it's"},
		{"DQ", `say "hi" now`},
		{"SEMI", "a;b#c"},
		{"SECTION", "[program:evil]"},
		{"EQ", "k=v,X=y"},
	}
	args := []string{"'; [program:evil]", "a ;b #c", "%(here)s", "", `x\y "z"`}
	m := map[string]string{}
	var refs, want []string
	for _, e := range env {
		m[e.k] = e.v
		refs = append(refs, `"$`+e.k+`"`)
		want = append(want, "<"+e.v+">")
	}
	for _, a := range args {
		want = append(want, "<"+a+">")
	}
	script := `printf '<%s>\n' ` + strings.Join(refs, " ") + ` "$@"; exec sleep 600`
	return drivers.InstanceTemplate{
		Name:        name,
		Command:     append([]string{"/bin/sh", "-c", script, "sh"}, args...),
		Environment: m,
		WorkDir:     "/tmp",
	}, want
}

func TestRenderHostileValuesStayOnTheirLines(t *testing.T) {
	tm, _ := hostileTemplate("hostile")
	b, err := renderProgram(tm, time.Now(), testSettings())
	if err != nil {
		t.Fatalf("renderProgram: %v", err)
	}
	checkProgramFile(t, string(b), "hostile")
	sp, ok, err := parseSpec(b)
	if err != nil || !ok {
		t.Fatalf("parseSpec: ok=%v err=%v", ok, err)
	}
	if fmt.Sprint(sp.Template) != fmt.Sprint(tm) {
		t.Errorf("spec round trip: %+v, want %+v", sp.Template, tm)
	}
}

// checkProgramFile checks that a program file has exactly one section,
// [program:name], and each expected key once.
func checkProgramFile(t *testing.T, data, name string) {
	t.Helper()
	lines := parseINI(t, data)
	keys := map[string]int{}
	for _, l := range lines {
		if l.key == "" {
			if l.section != "program:"+name {
				t.Errorf("unexpected section [%s]", l.section)
			}
			continue
		}
		if l.section != "program:"+name {
			t.Errorf("key %s outside [program:%s]", l.key, name)
		}
		keys[l.key]++
	}
	allowed := []string{"command", "environment", "directory", "user", "autostart", "autorestart", "startsecs",
		"startretries", "stopsignal", "stopwaitsecs", "stopasgroup", "killasgroup", "stdout_logfile", "stderr_logfile"}
	for k, n := range keys {
		found := false
		for _, a := range allowed {
			found = found || a == k
		}
		if !found || n != 1 {
			t.Errorf("key %q appears %d times (allowed: %v)", k, n, found)
		}
	}
	if keys["command"] != 1 || keys["autostart"] != 1 {
		t.Errorf("keys %v lack command or autostart", keys)
	}
}

func TestQuoteArg(t *testing.T) {
	cases := map[string]string{
		"":       "''",
		"a b":    "'a b'",
		"it's":   `'it'\''s'`,
		"a ;b":   `'a '\;'b'`,
		"#x":     `\#'x'`,
		"%(x)s":  "'%''(x)s'",
		`a\b"c"`: `'a\b"c"'`,
	}
	for in, want := range cases {
		if got := quoteArg(in); got != want {
			t.Errorf("quoteArg(%q) = %s, want %s", in, got, want)
		}
	}
}

func TestNormalize(t *testing.T) {
	cases := []struct {
		state    string
		exit     int
		expected []int
		want     drivers.State
	}{
		{"RUNNING", 0, nil, drivers.StateRunning},
		{"STARTING", 0, nil, drivers.StateStarting},
		{"BACKOFF", 0, nil, drivers.StateStarting},
		{"STOPPING", 0, nil, drivers.StateStopping},
		{"STOPPED", 0, nil, drivers.StateStopped},
		{"EXITED", 0, nil, drivers.StateStopped},
		{"EXITED", 2, []int{0, 2}, drivers.StateStopped},
		{"EXITED", 1, nil, drivers.StateError},
		{"EXITED", -1, []int{0}, drivers.StateError},
		{"FATAL", 0, nil, drivers.StateError},
		{"UNKNOWN", 0, nil, drivers.StateUnknown},
	}
	for _, c := range cases {
		if got := normalize(processInfo{StateName: c.state, ExitStatus: c.exit}, c.expected); got != c.want {
			t.Errorf("normalize(%s, exit %d, expected %v) = %s, want %s", c.state, c.exit, c.expected, got, c.want)
		}
	}
}

func TestErrorCode(t *testing.T) {
	cases := []struct {
		err  error
		want drivers.Code
	}{
		{&faultError{code: faultBadName}, drivers.NotFound},
		{&faultError{code: faultNoFile}, drivers.NotFound},
		{&faultError{code: faultNotExecutable}, drivers.InvalidArgument},
		{&faultError{code: faultBadSignal}, drivers.InvalidArgument},
		{&faultError{code: faultAlreadyStarted}, drivers.Conflict},
		{&faultError{code: faultNotRunning}, drivers.Conflict},
		{&faultError{code: faultStillRunning}, drivers.Conflict},
		{&faultError{code: faultAlreadyAdded}, drivers.AlreadyExists},
		{&faultError{code: faultSpawnError}, drivers.Internal},
		{&faultError{code: faultCantReread}, drivers.Internal},
		{&faultError{code: faultShutdownState}, drivers.Unavailable},
		{&faultError{code: faultUnknownMethod}, drivers.Unsupported},
		{fmt.Errorf("wrapped: %w", &faultError{code: faultBadName}), drivers.NotFound},
		{&httpError{status: 401}, drivers.PermissionDenied},
		{&httpError{status: 500}, drivers.Internal},
		{&connError{err: &net.OpError{Op: "dial", Err: os.ErrNotExist}}, drivers.Unavailable},
		{&connError{err: &net.OpError{Op: "dial", Err: os.ErrPermission}}, drivers.PermissionDenied},
		{fmt.Errorf("x: %w", errors.Join(errors.New("y"), context.DeadlineExceeded)), drivers.Timeout},
		{drivers.Errorf(drivers.Conflict, "x"), drivers.Conflict},
		{errors.New("other"), drivers.Internal},
	}
	for _, c := range cases {
		if got := classify(c.err); got != c.want {
			t.Errorf("classify(%v) = %s, want %s", c.err, got, c.want)
		}
	}
}

func TestDiffEvents(t *testing.T) {
	running := func(pid int, start, stop int64) processInfo {
		return processInfo{Name: "p", Group: "p", StateName: "RUNNING", PID: pid, Start: start, Stop: stop}
	}
	cases := []struct {
		desc     string
		old, cur []processInfo
		want     []drivers.EventType
	}{
		{"appeared", nil, []processInfo{{Name: "p", Group: "p", StateName: "STOPPED"}}, []drivers.EventType{drivers.EventAppeared}},
		{"vanished", []processInfo{{Name: "p", Group: "p", StateName: "STOPPED"}}, nil, []drivers.EventType{drivers.EventVanished}},
		{"unchanged", []processInfo{running(10, 1, 0)}, []processInfo{running(10, 1, 0)}, nil},
		{"started", []processInfo{{Name: "p", Group: "p", StateName: "STOPPED"}}, []processInfo{running(10, 5, 0)}, []drivers.EventType{drivers.EventStarted}},
		{"stopped by hand", []processInfo{running(10, 1, 0)}, []processInfo{{Name: "p", Group: "p", StateName: "STOPPED", Start: 1, Stop: 9, ExitStatus: -1}},
			[]drivers.EventType{drivers.EventStopped}},
		{"fatal", []processInfo{{Name: "p", Group: "p", StateName: "STARTING", Start: 1}}, []processInfo{{Name: "p", Group: "p", StateName: "FATAL", Start: 1, Stop: 2, SpawnErr: "Exited too quickly"}},
			[]drivers.EventType{drivers.EventFailed}},
		{"exited unexpectedly", []processInfo{running(10, 1, 0)}, []processInfo{{Name: "p", Group: "p", StateName: "EXITED", Start: 1, Stop: 9, ExitStatus: 3}},
			[]drivers.EventType{drivers.EventFailed}},
		{"exited cleanly", []processInfo{running(10, 1, 0)}, []processInfo{{Name: "p", Group: "p", StateName: "EXITED", Start: 1, Stop: 9}},
			[]drivers.EventType{drivers.EventStopped}},
		{"crashed and restarted", []processInfo{running(10, 1, 0)}, []processInfo{{Name: "p", Group: "p", StateName: "RUNNING", PID: 11, Start: 9, Stop: 9, ExitStatus: -1}},
			[]drivers.EventType{drivers.EventFailed, drivers.EventStarted}},
		{"crashed, restarting", []processInfo{running(10, 1, 0)}, []processInfo{{Name: "p", Group: "p", StateName: "STARTING", PID: 11, Start: 9, Stop: 9, ExitStatus: -1}},
			[]drivers.EventType{drivers.EventFailed, drivers.EventStateChanged}},
		{"crashed while seen starting", []processInfo{{Name: "p", Group: "p", StateName: "STARTING", PID: 10, Start: 1}},
			[]processInfo{{Name: "p", Group: "p", StateName: "STARTING", PID: 11, Start: 9, Stop: 9}},
			[]drivers.EventType{drivers.EventFailed, drivers.EventStateChanged}},
		{"backoff after running", []processInfo{running(10, 1, 0)}, []processInfo{{Name: "p", Group: "p", StateName: "BACKOFF", Start: 9, Stop: 9, SpawnErr: "x"}},
			[]drivers.EventType{drivers.EventFailed}},
	}
	for _, c := range cases {
		t.Run(c.desc, func(t *testing.T) {
			evs := diff(view(c.old), view(c.cur), nil, time.Now())
			var got []drivers.EventType
			for _, ev := range evs {
				got = append(got, ev.Type)
				if ev.Instance != "p" || ev.Time.IsZero() {
					t.Errorf("event %+v lacks instance or time", ev)
				}
				if ev.Type == drivers.EventFailed && ev.Err == nil {
					t.Errorf("failed event without error: %+v", ev)
				}
			}
			if fmt.Sprint(got) != fmt.Sprint(c.want) {
				t.Errorf("events %v, want %v", got, c.want)
			}
		})
	}
}

func TestOptionsFromConfig(t *testing.T) {
	cases := []struct {
		yaml    string
		wantKey string // "" = valid
	}{
		{"supervisor:\n  url: unix:///run/s.sock\n  programs_dir: /etc/s\n  stop_timeout: 5s\n  retry_attempts: 2\n", ""},
		{"supervisor:\n  url: http://127.0.0.1:9001\n  username: u\n  password: p\n  poll_interval: 500ms\n", ""},
		{"supervisor:\n  socket: /x\n", "supervisor"},
		{"supervisor:\n  url: ftp://x\n", "supervisor.url"},
		{"supervisor:\n  url: unix://relative/s.sock\n", "supervisor.url"},
		{"supervisor:\n  programs_dir: relative\n", "supervisor.programs_dir"},
		{"supervisor:\n  log_dir: \"/var/log ;x\"\n", "supervisor.log_dir"},
		{"supervisor:\n  autorestart: sometimes\n", "supervisor.autorestart"},
		{"supervisor:\n  stop_signal: BOGUS\n", "supervisor.stop_signal"},
		{"supervisor:\n  file_prefix: \"../\"\n", "supervisor.file_prefix"},
		{"supervisor:\n  poll_interval: 0s\n", "supervisor.poll_interval"},
	}
	for _, c := range cases {
		cfg, err := config.Parse([]byte(c.yaml))
		if err != nil {
			t.Fatalf("Parse(%q): %v", c.yaml, err)
		}
		_, err = OptionsFromConfig(cfg)
		var ce *config.Error
		switch {
		case c.wantKey == "" && err != nil:
			t.Errorf("OptionsFromConfig(%q): %v", c.yaml, err)
		case c.wantKey != "" && (!errors.As(err, &ce) || ce.Key != c.wantKey):
			t.Errorf("OptionsFromConfig(%q): %v, want a config error naming %s", c.yaml, err, c.wantKey)
		}
	}
	o, err := OptionsFromConfig(nil)
	if err != nil || o.URL != "unix:///var/run/supervisor.sock" || o.ProgramsDir != "/etc/supervisor/conf.d" {
		t.Errorf("defaults: %+v, %v", o, err)
	}
	if _, err := New(Options{StopSignal: "sigterm", URL: o.URL, ProgramsDir: o.ProgramsDir, LogDir: o.LogDir, FilePrefix: "x", Autorestart: "true", PollInterval: o.PollInterval, RequestTimeout: o.RequestTimeout}); err != nil {
		t.Errorf("New with stop_signal sigterm: %v", err)
	}
}
