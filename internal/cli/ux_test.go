package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/subbus/subbus/internal/drivers/process"
	"github.com/subbus/subbus/internal/manager"
	"github.com/subbus/subbus/internal/registry"
	"github.com/subbus/subbus/internal/testenv"
	"github.com/subbus/subbus/internal/version"
	"github.com/subbus/subbus/internal/worker"
	"github.com/subbus/subbus/internal/worker/workertest"
	"github.com/subbus/subbus/messages"
)

// offline runs subbus against a loopback port nobody listens on (for
// what needs no worker).
func offline(t *testing.T, args ...string) result {
	t.Helper()
	return subbus(t, "nats://127.0.0.1:14799", args...)
}

// --help at every level: command flags first, then the global flags, then
// the connection flags; GNU spellings; an example.
func TestHelpEveryLevel(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"--help"}, []string{"Driver commands:", "snapshot create", "Global flags:", "Connection flags", "-s, --server URL", "-j, --json", "--version"}},
		{[]string{"-h"}, []string{"Driver commands:"}},
		{[]string{"help"}, []string{"Driver commands:"}},
		{[]string{"process", "--help"}, []string{"subbus process <command>", "limits set"}},
		{[]string{"help", "process"}, []string{"subbus process <command>"}},
		{[]string{"process", "snapshot", "--help"}, []string{"subbus process snapshot <command>", "snapshot restore", "snapshot list"}},
		{[]string{"process", "snapshot", "create", "--help"}, []string{"subbus process snapshot create <name> <snapshot>", "Example:\n  subbus lxc snapshot create"}},
		{[]string{"help", "create"}, []string{"subbus <driver> create <name>", "Flags:", "--memory SIZE", "-f, --file FILE", "--label, --metadata K=V", "Example:\n  subbus process create web"}},
		{[]string{"help", "snapshot", "create"}, []string{"subbus <driver> snapshot create"}},
		{[]string{"process", "create", "web", "--image", "x", "--help"}, []string{"subbus process create <name>"}},
		{[]string{"docker", "stop", "--help"}, []string{"-t, --grace, --time D", "Example:\n  subbus docker stop web --grace 10s"}},
		{[]string{"events", "--help"}, []string{"subbus events", "--instance NAME", "Example:"}},
		{[]string{"help", "events"}, []string{"subbus events"}},
		{[]string{"help", "completion"}, []string{"completion bash|zsh|fish"}},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			r := offline(t, tc.args...).want(t, 0, "help")
			for _, w := range tc.want {
				if !strings.Contains(r.stdout, w) {
					t.Errorf("help lacks %q:\n%s", w, r.stdout)
				}
			}
			if r.stderr != "" {
				t.Errorf("help wrote to stderr: %s", r.stderr)
			}
			// Blocks in order; flags spelled GNU-style.
			own, global, conn := strings.Index(r.stdout, "\nFlags:"), strings.Index(r.stdout, "\nGlobal flags:"), strings.Index(r.stdout, "\nConnection flags")
			if own >= 0 && (global < own || conn < global) {
				t.Errorf("flag blocks out of order (own %d, global %d, connection %d)", own, global, conn)
			}
			for _, line := range strings.Split(r.stdout, "\n") {
				f := strings.Fields(line)
				if len(f) > 0 && strings.HasPrefix(f[0], "-") && !strings.HasPrefix(f[0], "--") && len(strings.TrimRight(f[0], ",")) > 2 {
					t.Errorf("single-dash long flag in help: %q", line)
				}
			}
		})
	}
	// Every visible command has an example that names a real command.
	for _, c := range commands {
		if c.hidden || c.name == "help" {
			continue
		}
		if c.example == "" {
			t.Errorf("command %q has no example", c.name)
			continue
		}
		words, _ := splitWords(strings.Fields(c.example))
		if found, _, _, err := findCommand(words); err != nil || found != c {
			t.Errorf("example of %q (%q) runs another command: %v", c.name, c.example, err)
		}
	}
}

// subbus --version, subbus version and the worker agree, from one source.
func TestVersionAgreesWithWorker(t *testing.T) {
	workertest.Isolate(t)
	url := workertest.StartNATS(t)
	d := processManager(t, "v1")
	workertest.StartWorkerWith(t, url, "v1", func(o *worker.Options) { o.Version = "" }, d)
	a := subbus(t, url, "--version").want(t, 0, "--version")
	b := subbus(t, url, "version").want(t, 0, "version")
	if a.stdout != b.stdout || !strings.HasPrefix(a.stdout, "subbus "+version.String()+" ") {
		t.Fatalf("--version %q, version %q, want subbus %s", a.stdout, b.stdout, version.String())
	}
	j := decode[map[string]string](t, subbus(t, url, "version", "--json").want(t, 0, "version --json").stdout)
	r := subbus(t, url, "workers", "--json").want(t, 0, "workers")
	ws := decode[[]workerStatus](t, r.stdout)
	if len(ws) != 1 || ws[0].Version != version.Version || !strings.HasPrefix(j["version"], ws[0].Version) {
		t.Fatalf("worker version %+v, subbus version %q, want both %s", ws, j["version"], version.Version)
	}
}

// The CLI's built-in driver names are the registry's.
func TestBuiltinDriversMatchRegistry(t *testing.T) {
	if got := registry.Names(); !slices.Equal(got, builtinDrivers) {
		t.Fatalf("builtinDrivers %v, registry %v", builtinDrivers, got)
	}
}

// Typos: an unknown driver lists what the fleet serves (or the built-in
// drivers when nobody answers); an unknown command or flag suggests the
// nearest one. Usage errors, exit 2, nothing sent.
func TestTypoHelp(t *testing.T) {
	workertest.Isolate(t)
	url := workertest.StartNATS(t)
	startWorker(t, url, "h1")
	for _, tc := range []struct {
		name string
		url  string
		args []string
		want string
	}{
		{"driver, fleet answers", url, []string{"procss", "list"}, `unknown driver "procss" (the fleet serves: process); did you mean "process"?`},
		{"driver, nobody answers", "nats://127.0.0.1:14798", []string{"procss", "list"},
			`unknown driver "procss" (no worker answered; the built-in drivers are: docker, libvirt, lxc, process, proxmox, supervisor); did you mean "process"?`},
		{"command", url, []string{"process", "strat", "x"}, `unknown command "strat" for driver process; did you mean "start"?`},
		{"swapped letters", url, []string{"process", "lsit"}, `did you mean "list"?`},
		{"sub-command", url, []string{"process", "snapshot", "creat", "x", "s"}, `unknown command "snapshot creat"; did you mean "create"?`},
		{"top-level", url, []string{"evnets"}, `did you mean "events"?`},
		{"flag", url, []string{"process", "create", "x", "--memroy", "1G", "--", "true"}, `unknown flag --memroy for 'subbus process create'; did you mean --memory?`},
		{"flag of another command", url, []string{"process", "list", "--forse"}, `unknown flag --forse for 'subbus process list'`},
		{"bad value", url, []string{"process", "create", "x", "--memory", "lots", "--", "true"}, `invalid value "lots" for flag --memory`},
		{"state", url, []string{"process", "list", "--state", "runing"}, `did you mean "running"?`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := subbus(t, tc.url, tc.args...).want(t, ExitUsage, tc.name)
			if !strings.Contains(r.stderr, tc.want) {
				t.Fatalf("stderr %q lacks %q", r.stderr, tc.want)
			}
		})
	}
	r := subbus(t, url, "process", "list", "--forse").want(t, ExitUsage, "flag of another command")
	if strings.Contains(r.stderr, "did you mean --force") {
		t.Fatalf("suggested a flag list does not take: %s", r.stderr)
	}
	// A built-in driver no worker serves is still no_worker, as before.
	subbus(t, url, "docker", "list", "--host", "h1").want(t, ExitNoWorker, "built-in driver not served")
}

// With --json an error is one JSON object on stdout, nothing on stderr,
// and the exit status is the same as without.
func TestJSONErrors(t *testing.T) {
	workertest.Isolate(t)
	url := workertest.StartNATS(t)
	startWorker(t, url, "h1")
	for _, tc := range []struct {
		args  []string
		code  int
		ecode string
		retry bool
	}{
		{[]string{"process", "get", "nosuch", "--json"}, ExitNotFound, "not_found", false},
		{[]string{"process", "get", "-j", "nosuch"}, ExitNotFound, "not_found", false},
		{[]string{"process", "strat", "x", "--json"}, ExitUsage, "usage", false},
		{[]string{"--json", "process", "list", "--bogus"}, ExitUsage, "usage", false},
		{[]string{"docker", "list", "--host", "h1", "--json"}, ExitNoWorker, "no_worker", true},
		{[]string{"process", "exec", "nosuch", "--json", "--", "true"}, ExitExecFailed, "not_found", false},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			plain := slices.DeleteFunc(slices.Clone(tc.args), func(a string) bool { return a == "--json" || a == "-j" })
			subbus(t, url, plain...).want(t, tc.code, "without --json")
			r := subbus(t, url, tc.args...).want(t, tc.code, "with --json")
			if r.stderr != "" {
				t.Errorf("stderr: %q", r.stderr)
			}
			var got struct {
				Error *struct {
					Code      string `json:"code"`
					Message   string `json:"message"`
					Retryable bool   `json:"retryable"`
				} `json:"error"`
			}
			dec := json.NewDecoder(strings.NewReader(r.stdout))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&got); err != nil || got.Error == nil {
				t.Fatalf("stdout is not a JSON error: %v\n%s", err, r.stdout)
			}
			if got.Error.Code != tc.ecode || got.Error.Retryable != tc.retry || got.Error.Message == "" {
				t.Fatalf("error %+v, want code %s retryable %v", *got.Error, tc.ecode, tc.retry)
			}
		})
	}
}

// Shell completion: the scripts, and the candidates they offer (drivers
// from discovery, commands and flags from the table, instance names from
// a live list).
func TestCompletion(t *testing.T) {
	workertest.Isolate(t)
	url := workertest.StartNATS(t)
	startWorker(t, url, "h1")
	name := unique("cl-comp")
	t.Cleanup(func() { subbus(t, url, "process", "delete", name, "--force") })
	subbus(t, url, "process", "create", name, "--", "sleep", "60").want(t, 0, "create")

	// Each script is syntax-checked by its own shell (-n: parse only),
	// and the checker is shown to reject the script with an unclosed if
	// appended, so a check that passes means something.
	for _, sh := range []string{"bash", "zsh", "fish"} {
		t.Run(sh, func(t *testing.T) {
			r := offline(t, "completion", sh).want(t, 0, "completion "+sh)
			if !strings.Contains(r.stdout, "subbus __complete") {
				t.Errorf("%s script does not call subbus __complete:\n%s", sh, r.stdout)
			}
			bin := testenv.Tool(t, sh, "apt-get install "+sh+" (bash scripts/setup/tools.sh)")
			check := func(script string) ([]byte, error) {
				cmd := exec.Command(bin, "-n")
				cmd.Stdin = strings.NewReader(script)
				return cmd.CombinedOutput()
			}
			if out, err := check(r.stdout); err != nil {
				t.Errorf("%s -n on the %s script: %v\n%s", sh, sh, err, out)
			}
			broken := r.stdout + "\nif true; then\n"
			if sh == "fish" {
				broken = r.stdout + "\nif true\n"
			}
			if _, err := check(broken); err == nil {
				t.Errorf("%s -n accepted a script with an unclosed if: the syntax check proves nothing", sh)
			}
		})
	}
	offline(t, "completion", "tcsh").want(t, ExitUsage, "unknown shell")

	complete := func(words ...string) []string {
		t.Helper()
		var out, errOut bytes.Buffer
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if code := Run(ctx, append([]string{"__complete", "--server", url}, words...), &out, &errOut); code != 0 {
			t.Fatalf("__complete %q: exit %d: %s", words, code, errOut.String())
		}
		return strings.Fields(out.String())
	}
	for _, tc := range []struct {
		words     []string
		want, not []string
	}{
		{[]string{""}, []string{"process", "events", "workers", "completion"}, []string{"docker", "__complete"}},
		{[]string{"pro"}, []string{"process"}, []string{"events"}},
		{[]string{"process", ""}, []string{"list", "start", "snapshot", "limits"}, []string{"snapshot create"}},
		{[]string{"process", "snapshot", ""}, []string{"create", "restore", "list", "delete"}, nil},
		{[]string{"process", "start", ""}, []string{name}, nil},
		{[]string{"process", "logs", name[:5]}, []string{name}, nil},
		{[]string{"process", "create", "x", "--mem"}, []string{"--memory"}, []string{"--state"}},
		{[]string{"process", "stop", "x", "-"}, []string{"--grace", "--time", "-t", "--server", "--json", "--help"}, nil},
		{[]string{"process", "list", "--state", ""}, []string{"running", "stopped"}, nil},
		{[]string{"events", "--driver", ""}, []string{"process"}, nil},
		{[]string{"completion", ""}, []string{"bash", "zsh", "fish"}, nil},
		{[]string{"process", "exec", name, "--", ""}, nil, []string{"list", name}},
	} {
		got := complete(tc.words...)
		for _, w := range tc.want {
			if !slices.Contains(got, w) {
				t.Errorf("complete %q = %v, lacks %q", tc.words, got, w)
			}
		}
		for _, w := range tc.not {
			if slices.Contains(got, w) {
				t.Errorf("complete %q = %v, has %q", tc.words, got, w)
			}
		}
	}
	// Without a worker: the built-in drivers, and no instances (quickly).
	start := time.Now()
	var out bytes.Buffer
	Run(context.Background(), []string{"__complete", "--server", "nats://127.0.0.1:14797", ""}, &out, &bytes.Buffer{})
	if got := strings.Fields(out.String()); !slices.Contains(got, "docker") || !slices.Contains(got, "lxc") || time.Since(start) > 15*time.Second {
		t.Errorf("offline completion %v after %s", got, time.Since(start))
	}
}

// The man page is made from the command table and renders without
// warnings.
func TestManPage(t *testing.T) {
	r := offline(t, "man").want(t, 0, "man")
	for _, w := range []string{".TH SUBBUS 1", ".SH NAME", ".SH SYNOPSIS", ".SH DRIVER COMMANDS", ".SH EXIT STATUS", ".SH CONNECTION FLAGS"} {
		if !strings.Contains(r.stdout, w) {
			t.Errorf("man page lacks %q", w)
		}
	}
	for _, c := range commands {
		if !c.hidden && !strings.Contains(r.stdout, ".SS "+roff(c.name)+"\n") {
			t.Errorf("man page lacks a section for %q", c.name)
		}
	}
	groff, err := exec.LookPath("groff")
	if err != nil {
		t.Skip("groff not installed (apt-get install groff-base): structure checked only")
	}
	cmd := exec.Command(groff, "-man", "-Tutf8", "-ww")
	cmd.Stdin = strings.NewReader(r.stdout)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil || errOut.Len() > 0 {
		t.Fatalf("groff: %v\n%s", err, errOut.String())
	}
	text := out.String()
	for _, w := range []string{"SUBBUS(1)", "snapshot create", "--grace", "no_worker"} {
		if !strings.Contains(strings.ReplaceAll(text, "\u2010", "-"), w) {
			t.Errorf("rendered man page lacks %q", w)
		}
	}
	if man, err := exec.LookPath("man"); err == nil {
		f := filepath.Join(t.TempDir(), "subbus.1")
		if err := os.WriteFile(f, []byte(r.stdout), 0o644); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(man, "-l", f)
		cmd.Env = append(os.Environ(), "MANPAGER=cat", "PAGER=cat", "MANWIDTH=100")
		if out, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(out), "SUBBUS(1)") {
			t.Fatalf("man -l: %v\n%s", err, out)
		}
	}
}

func TestUnits(t *testing.T) {
	for _, tc := range []struct {
		in   string
		pow  int
		want float64
		bad  bool
	}{
		{"512", 2, 512, false}, {"512M", 2, 512, false}, {"512Mi", 2, 512, false}, {"512MiB", 2, 512, false},
		{"512mb", 2, 512, false}, {"1G", 2, 1024, false}, {"1.5Gi", 2, 1536, false}, {"2048K", 2, 2, false},
		{"1T", 3, 1024, false}, {"10", 3, 10, false}, {"512M", 3, 0.5, false},
		{"", 2, 0, true}, {"M", 2, 0, true}, {"12X", 2, 0, true}, {"-1G", 2, 0, true}, {"lots", 2, 0, true},
	} {
		got, err := parseSize(tc.in, tc.pow)
		if (err != nil) != tc.bad || (!tc.bad && got != tc.want) {
			t.Errorf("parseSize(%q, %d) = %v, %v; want %v (bad %v)", tc.in, tc.pow, got, err, tc.want, tc.bad)
		}
	}
	m := mibFlag()
	if err := m.Set("100K"); err == nil {
		t.Error("--memory 100K accepted (not a whole MiB)")
	}
	for _, tc := range []struct {
		in   string
		want time.Duration
		bad  bool
	}{
		{"5", 5 * time.Second, false}, {"5s", 5 * time.Second, false}, {"1m", time.Minute, false},
		{"1.5", 1500 * time.Millisecond, false}, {"1m30s", 90 * time.Second, false},
		{"-5", 0, true}, {"soon", 0, true}, {"5x", 0, true},
	} {
		got, err := parseDuration(tc.in)
		if (err != nil) != tc.bad || got != tc.want {
			t.Errorf("parseDuration(%q) = %v, %v; want %v (bad %v)", tc.in, got, err, tc.want, tc.bad)
		}
	}
}

// Template keys and flags line up: image/base_image, labels/metadata,
// run_as/user, env/environment are each accepted, not both at once.
func TestTemplateAliases(t *testing.T) {
	tm, err := parseTemplate("t.yaml", []byte("name: a\nimage: /bin/sleep\nlabels: {team: x}\nrun_as: nobody\nenv: {A: b}\ncommand: [sleep, '1']\n"))
	if err != nil {
		t.Fatal(err)
	}
	if tm.BaseImage != "/bin/sleep" || tm.Metadata["team"] != "x" || tm.User != "nobody" || tm.Environment["A"] != "b" {
		t.Fatalf("aliases not read: %+v", tm)
	}
	if _, err := parseTemplate("t.yaml", []byte("name: a\nimage: x\nbase_image: y\n")); err == nil || !strings.Contains(err.Error(), "same key") {
		t.Fatalf("image and base_image together: %v", err)
	}
}

// processManager is a process-driver manager for host.
func processManager(t *testing.T, host string) *manager.Manager {
	t.Helper()
	d := process.New(process.Options{StateDir: t.TempDir(), Cgroups: "off", DefaultUser: "root", AllowRoot: true})
	return manager.New(d, manager.Options{Host: host})
}

// startNATSAt runs a nats-server with JetStream on a fixed loopback port
// and store directory (so a second one started after it has the same
// streams), stopped at the end of the test at the latest.
func startNATSAt(t *testing.T, port int, store string) *server.Server {
	t.Helper()
	s, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: port, JetStream: true, StoreDir: store,
		JetStreamMaxMemory: 64 << 20, JetStreamMaxStore: 1 << 30, NoSigs: true, NoLog: true})
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server did not start")
	}
	t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	return s
}

// The stop grace period: --grace, -t, --time, plain seconds; --timeout
// alone still works on stop/restart, with a deprecation warning.
func TestGraceFlag(t *testing.T) {
	workertest.Isolate(t)
	url := workertest.StartNATS(t)
	startWorker(t, url, "h1")
	name := unique("cl-grace")
	t.Cleanup(func() { subbus(t, url, "process", "delete", name, "--force") })
	// Ignores SIGTERM: a stop takes the whole grace period, then kills.
	ready := filepath.Join(t.TempDir(), "ready")
	subbus(t, url, "process", "create", name, "--", "/bin/sh", "-c", `trap "" TERM; touch `+ready+`; while :; do sleep 1; done`).want(t, 0, "create")
	startReady := func() {
		t.Helper()
		_ = os.Remove(ready)
		subbus(t, url, "process", "start", name).want(t, 0, "start")
		testenv.Eventually(t, 20*time.Second, func() error { _, err := os.Stat(ready); return err })
	}
	for _, tc := range []struct {
		args       []string
		deprecated bool
	}{
		{[]string{"--grace", "2"}, false},
		{[]string{"-t", "2s"}, false},
		{[]string{"--time=2"}, false},
		{[]string{"--timeout", "2s"}, true},
		{[]string{"--grace", "2s", "--timeout", "40s"}, false},
	} {
		startReady()
		start := time.Now()
		r := subbus(t, url, append([]string{"process", "stop", name}, tc.args...)...).want(t, 0, fmt.Sprint("stop ", tc.args))
		took := time.Since(start)
		if took < 2*time.Second || took > 20*time.Second {
			t.Errorf("stop %v took %s, want the 2s grace period", tc.args, took)
		}
		if got := strings.Contains(r.stderr, "deprecated"); got != tc.deprecated {
			t.Errorf("stop %v: deprecation warning %v, want %v (stderr %q)", tc.args, got, tc.deprecated, r.stderr)
		}
	}
	startReady()
	r := subbus(t, url, "process", "restart", name, "--timeout", "1").want(t, 0, "restart --timeout")
	if !strings.Contains(r.stderr, "warning: --timeout on restart is deprecated") || !strings.Contains(r.stdout, "restarted") {
		t.Fatalf("restart --timeout: stdout %q stderr %q", r.stdout, r.stderr)
	}
	subbus(t, url, "process", "stop", name, "--grace", "soon").want(t, ExitUsage, "bad --grace")
}

// get and --json show what was given and what the substrate knows, with
// secret values masked and one state text.
func TestGetShowsEverything(t *testing.T) {
	workertest.Isolate(t)
	url := workertest.StartNATS(t)
	startWorker(t, url, "h1")
	name := unique("cl-get")
	t.Cleanup(func() { subbus(t, url, "process", "delete", name, "--force") })
	dir := t.TempDir()
	subbus(t, url, "process", "create", name, "--env", "API_TOKEN=hunter2", "--env", "PORT=8080", "--workdir", dir,
		"--metadata", "team=qa", "--", "/bin/sh", "-c", `test -n "$STOPNOW" && exit 3; sleep 300`).want(t, 0, "create")
	subbus(t, url, "process", "start", name).want(t, 0, "start")
	r := subbus(t, url, "process", "get", name, "--json").want(t, 0, "get --json")
	if strings.Contains(r.stdout, "hunter2") {
		t.Fatalf("the secret reached the output:\n%s", r.stdout)
	}
	i := decode[messages.Instance](t, r.stdout)
	if !slices.Equal(i.Command, []string{"/bin/sh", "-c", `test -n "$STOPNOW" && exit 3; sleep 300`}) ||
		i.Environment["API_TOKEN"] != messages.MaskedValue || i.Environment["PORT"] != "8080" || i.WorkDir != dir ||
		i.PID <= 0 || i.StartedAt.IsZero() || i.NativeState != "running" || i.Metadata["team"] != "qa" {
		t.Fatalf("get --json: %+v", i)
	}
	r = subbus(t, url, "process", "get", name).want(t, 0, "get")
	for _, w := range []string{"State:    running\n", fmt.Sprintf("PID:      %d\n", i.PID), "Command:  /bin/sh -c 'test -n", "Env:      API_TOKEN=********", "Label:    team=qa", "Started:"} {
		if !strings.Contains(r.stdout, w) {
			t.Errorf("get lacks %q:\n%s", w, r.stdout)
		}
	}
	if strings.Contains(r.stdout, "running (running") {
		t.Errorf("doubled state text:\n%s", r.stdout)
	}
	// An exit code once it has exited.
	quick := unique("cl-exit")
	t.Cleanup(func() { subbus(t, url, "process", "delete", quick, "--force") })
	subbus(t, url, "process", "create", quick, "--", "/bin/sh", "-c", "sleep 0.2; exit 3").want(t, 0, "create")
	// It dies within process.start_settle: start says so (exit status 13).
	if r := subbus(t, url, "process", "start", quick).want(t, ExitExited, "start of a command that dies at once"); !strings.Contains(r.stderr, "exited (status 3)") {
		t.Errorf("start of a command that dies at once: %q", r.stderr)
	}
	testenv.Eventually(t, 20*time.Second, func() error {
		r := subbus(t, url, "process", "get", quick, "--json")
		if i := decode[messages.Instance](t, r.stdout); i.PID != 0 || i.ExitCode == nil || *i.ExitCode != 3 {
			return fmt.Errorf("state %s pid %d exit %v", i.State, i.PID, i.ExitCode)
		}
		return nil
	})
	r = subbus(t, url, "process", "get", quick).want(t, 0, "get exited")
	if !strings.Contains(r.stdout, "Exit code:  3\n") && !strings.Contains(r.stdout, "Exit code:") {
		t.Fatalf("get of an exited instance:\n%s", r.stdout)
	}
}

// list --state, --label and -q.
func TestListFilters(t *testing.T) {
	workertest.Isolate(t)
	url := workertest.StartNATS(t)
	startWorker(t, url, "h1")
	a, b := unique("cl-la"), unique("cl-lb")
	t.Cleanup(func() {
		subbus(t, url, "process", "delete", a, "--force")
		subbus(t, url, "process", "delete", b, "--force")
	})
	subbus(t, url, "process", "create", a, "--label", "team=x", "--", "sleep", "300").want(t, 0, "create a")
	subbus(t, url, "process", "create", b, "--label", "team=y", "--label", "tier=db", "--", "sleep", "300").want(t, 0, "create b")
	subbus(t, url, "process", "start", a).want(t, 0, "start a")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-q"}, a + "\n" + b + "\n"},
		{[]string{"--state", "running", "-q"}, a + "\n"},
		{[]string{"--state", "stopped", "--quiet"}, b + "\n"},
		{[]string{"--label", "team=y", "-q"}, b + "\n"},
		{[]string{"--label", "team=y", "--label", "tier=db", "-q", "--host", "h1"}, b + "\n"},
		{[]string{"--label", "team=y", "--label", "tier=web", "-q"}, ""},
		{[]string{"--state", "running", "--label", "team=y", "-q", "--all-hosts"}, ""},
	} {
		r := subbus(t, url, append([]string{"process", "list"}, tc.args...)...).want(t, 0, fmt.Sprint("list ", tc.args))
		if r.stdout != tc.want {
			t.Errorf("list %v = %q, want %q", tc.args, r.stdout, tc.want)
		}
	}
	r := subbus(t, url, "process", "list", "--state", "running", "--json").want(t, 0, "list --json filtered")
	if l := decode[[]messages.Instance](t, r.stdout); len(l) != 1 || l[0].Name != a {
		t.Fatalf("list --state running --json: %+v", l)
	}
	subbus(t, url, "process", "list", "--label", "novalue").want(t, ExitUsage, "bad --label")
}

// events --follow says when the NATS connection is lost and when it is
// back, and goes on following: the server is stopped and started again
// on the same port and store.
func TestEventsFollowReconnect(t *testing.T) {
	workertest.Isolate(t)
	port := 14710
	store := t.TempDir()
	srv := startNATSAt(t, port, store)
	url := fmt.Sprintf("nats://127.0.0.1:%d", port)
	startWorker(t, url, "h1")
	name := unique("cl-ev")
	t.Cleanup(func() { subbus(t, url, "process", "delete", name, "--force") })

	var out, errOut syncBuffer
	ctx, cancel := context.WithCancel(context.Background())
	done, code := make(chan struct{}), -1
	go func() {
		defer close(done)
		code = Run(ctx, []string{"--server", url, "events", "--follow", "--instance", name}, &out, &errOut)
	}()
	t.Cleanup(func() { cancel(); <-done })
	subbus(t, url, "process", "create", name, "--", "sleep", "300").want(t, 0, "create")
	testenv.Eventually(t, 20*time.Second, func() error {
		if !strings.Contains(out.String(), "created") {
			return fmt.Errorf("no created event yet: %q", out.String())
		}
		return nil
	})
	srv.Shutdown()
	srv.WaitForShutdown()
	testenv.Eventually(t, 20*time.Second, func() error {
		if !strings.Contains(errOut.String(), "subbus: lost the connection to NATS") {
			return fmt.Errorf("no notice of the lost connection: %q", errOut.String())
		}
		return nil
	})
	startNATSAt(t, port, store)
	testenv.Eventually(t, 30*time.Second, func() error {
		if !strings.Contains(errOut.String(), "subbus: reconnected to NATS at") {
			return fmt.Errorf("no notice of the reconnection: %q", errOut.String())
		}
		return nil
	})
	// Still following: a new event shows.
	testenv.Eventually(t, 60*time.Second, func() error {
		r := subbus(t, url, "process", "start", name)
		if r.code != 0 {
			return fmt.Errorf("start: %d %s", r.code, r.stderr)
		}
		if !strings.Contains(out.String(), "started") {
			return fmt.Errorf("no started event after the reconnection: %q", out.String())
		}
		return nil
	})
	cancel()
	if <-done; code != 0 {
		t.Fatalf("events --follow exited %d: %s", code, errOut.String())
	}
}
