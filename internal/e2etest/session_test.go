package e2etest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rogpeppe/go-internal/testscript"

	"github.com/subbus/subbus/internal/cli"
	"github.com/subbus/subbus/internal/cli/clitest"
	"github.com/subbus/subbus/messages"
)

// substrate is what the session needs to know about one driver beyond
// what the driver reports itself (its capabilities, read with `subbus
// <driver> capabilities --json` at the start of the session): what its
// images are and what its create takes. A substrate function (substrates.go)
// starts a worker serving the driver and returns one, or skips the test
// (fails it under CI=true) when the substrate is not there.
type substrate struct {
	driver string
	url    string // the worker's nats-server
	// image is an image the substrate has, noImage one it has not.
	image, noImage string
	// command: create runs the command given after `--` (process,
	// supervisor, docker). Otherwise the image boots its own init, and a
	// command is refused as unsupported (system containers, VMs).
	command bool
	// env: create takes --env (PVE cannot set a guest's environment).
	env bool
	// hello is a regexp of what the instance logs once it runs ($NAME
	// stands for the instance's name).
	hello string
	// net is a network to attach (drivers with the networks capability);
	// homeNet, when set, is the network to create on (docker: an
	// internal network rather than the default bridge).
	net, homeNet string
	// grace is the graceful stop period of stop and restart.
	grace string
	// limit bounds one subbus command.
	limit time.Duration
	// remove deletes what a session left behind, whatever happened
	// (substrate-native leftovers such as docker's snapshot images).
	remove func(names ...string)
}

// substrates are the drivers the session runs against, in the order run.
var substrates = []struct {
	name  string
	start func(t *testing.T) *substrate
}{
	{"process", processSubstrate},
	{"supervisor", supervisorSubstrate},
	{"docker", dockerSubstrate},
	{"lxc", lxcSubstrate},
	{"proxmox", proxmoxSubstrate},
	{"libvirt", libvirtSubstrate},
}

// TestSession runs testdata/*.txtar, the user's session, against every
// driver: the same words and the same expectations, with `unsupported`
// expected where the driver's own capabilities say so. Run one driver
// with -run 'TestSession/docker'.
//
// The script's commands beyond testscript's own:
//
//	subbus ARGS...              runs the CLI against the worker (in-process);
//	                            `! subbus` expects it to fail
//	await D REGEXP subbus ARGS  runs it again until it succeeds with stdout
//	                            matching REGEXP (at most D)
//	follow D REGEXP subbus ARGS runs a command that does not end by itself
//	                            (logs --follow, metrics --watch) until its
//	                            stdout matches REGEXP (at most D), then
//	                            interrupts it as Ctrl-C would: it must end
//	                            at once with status 0
//	status N                    the last subbus exited with status N
//	consecutive REGEXP          the numbers REGEXP's group captures in stdout
//	                            (at least two) follow each other: no line
//	                            lost or repeated
//
// Its conditions: [exec] [logs] [limits] [snapshots] [clone] [networks]
// [events] (the capabilities), [command] and [env] (what create takes,
// above) and [driver:NAME].
func TestSession(t *testing.T) {
	for _, sub := range substrates {
		t.Run(sub.name, func(t *testing.T) {
			s := sub.start(t)
			runSession(t, s)
		})
	}
}

// session is one run of the script against one substrate.
type session struct {
	*substrate
	caps   messages.Capabilities
	last   int // exit status of the last subbus
	name   string
	clone  string
	reject string // a name create must refuse
}

func runSession(t *testing.T, s *substrate) {
	ss := &session{substrate: s, name: clitest.Unique("ee-" + s.driver), clone: clitest.Unique("ee-clone"), reject: clitest.Unique("ee-x")}
	t.Cleanup(func() {
		for _, n := range []string{ss.clone, ss.name, ss.reject} {
			ss.run("--timeout", "2m", s.driver, "delete", n, "--force")
		}
		if s.remove != nil {
			s.remove(ss.name, ss.clone, ss.reject)
		}
	})
	out, errOut, code := ss.run(s.driver, "capabilities", "--json")
	if code != 0 {
		t.Fatalf("subbus %s capabilities: exit %d: %s", s.driver, code, errOut)
	}
	var caps messages.CapabilitiesResult
	if err := json.Unmarshal([]byte(out), &caps); err != nil {
		t.Fatalf("capabilities --json: %v\n%s", err, out)
	}
	ss.caps = caps.Capabilities
	t.Logf("%s capabilities: %+v", s.driver, ss.caps)

	testscript.Run(t, testscript.Params{
		Dir: "testdata",
		Setup: func(e *testscript.Env) error {
			for k, v := range map[string]string{
				"DRIVER": s.driver, "NAME": ss.name, "CLONE": ss.clone, "REJECT": ss.reject,
				"IMAGE": s.image, "NOIMAGE": s.noImage, "HELLO": strings.ReplaceAll(s.hello, "$NAME", regexp.QuoteMeta(ss.name)),
				"NET": s.net, "HOMENET": s.homeNet, "GRACE": s.grace,
			} {
				e.Setenv(k, v)
			}
			return nil
		},
		Cmds: map[string]func(*testscript.TestScript, bool, []string){
			"subbus":      ss.cmdSubbus,
			"await":       ss.cmdAwait,
			"status":      ss.cmdStatus,
			"follow":      ss.cmdFollow,
			"consecutive": cmdConsecutive,
		},
		Condition: ss.condition,
	})
}

// run runs `subbus --server URL args...` in-process, bounded by limit.
func (s *session) run(args ...string) (stdout, stderr string, code int) {
	var out, errOut bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), s.limit)
	defer cancel()
	code = cli.Run(ctx, append([]string{"--server", s.url}, args...), &out, &errOut)
	return out.String(), errOut.String(), code
}

func (s *session) cmdSubbus(ts *testscript.TestScript, neg bool, args []string) {
	out, errOut, code := s.run(args...)
	s.last = code
	_, _ = ts.Stdout().Write([]byte(out))
	_, _ = ts.Stderr().Write([]byte(errOut))
	switch {
	case neg && code == 0:
		ts.Fatalf("subbus %s succeeded, want a failure", strings.Join(args, " "))
	case !neg && code != 0:
		ts.Fatalf("subbus %s: exit %d", strings.Join(args, " "), code)
	}
}

// cmdAwait: await DURATION REGEXP subbus ARGS...
func (s *session) cmdAwait(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) < 3 || args[2] != "subbus" {
		ts.Fatalf("usage: await DURATION REGEXP subbus ARGS...")
	}
	within, err := time.ParseDuration(args[0])
	ts.Check(err)
	re, err := regexp.Compile("(?m)" + args[1])
	ts.Check(err)
	deadline := time.Now().Add(within)
	for {
		out, errOut, code := s.run(args[3:]...)
		s.last = code
		if code == 0 && re.MatchString(out) {
			_, _ = ts.Stdout().Write([]byte(out))
			_, _ = ts.Stderr().Write([]byte(errOut))
			return
		}
		if time.Now().After(deadline) {
			_, _ = ts.Stdout().Write([]byte(out))
			_, _ = ts.Stderr().Write([]byte(errOut))
			ts.Fatalf("subbus %s: no output matching %q within %v (last exit %d)", strings.Join(args[3:], " "), args[1], within, code)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// cmdFollow: follow DURATION REGEXP subbus ARGS...
func (s *session) cmdFollow(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) < 3 || args[2] != "subbus" {
		ts.Fatalf("usage: follow DURATION REGEXP subbus ARGS...")
	}
	within, err := time.ParseDuration(args[0])
	ts.Check(err)
	re, err := regexp.Compile("(?m)" + args[1])
	ts.Check(err)
	var out, errOut lockedBuffer
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan int, 1)
	go func() { done <- cli.Run(ctx, append([]string{"--server", s.url}, args[3:]...), &out, &errOut) }()
	report := func() {
		_, _ = ts.Stdout().Write([]byte(out.String()))
		_, _ = ts.Stderr().Write([]byte(errOut.String()))
	}
	deadline := time.Now().Add(within)
	for !re.MatchString(out.String()) {
		select {
		case code := <-done:
			s.last = code
			report()
			ts.Fatalf("subbus %s ended by itself (exit %d) before its output matched %q", strings.Join(args[3:], " "), code, args[1])
		case <-time.After(200 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			cancel()
			<-done
			report()
			ts.Fatalf("subbus %s: no output matching %q within %v", strings.Join(args[3:], " "), args[1], within)
		}
	}
	cancel()
	select {
	case s.last = <-done:
	case <-time.After(15 * time.Second):
		ts.Fatalf("subbus %s did not end within 15s of the interrupt", strings.Join(args[3:], " "))
	}
	report()
	if s.last != 0 {
		ts.Fatalf("subbus %s, interrupted: exit %d, want 0", strings.Join(args[3:], " "), s.last)
	}
}

// cmdConsecutive: consecutive REGEXP (on the last command's stdout).
func cmdConsecutive(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: consecutive REGEXP")
	}
	re, err := regexp.Compile("(?m)" + args[0])
	ts.Check(err)
	var n []int
	for _, m := range re.FindAllStringSubmatch(ts.ReadFile("stdout"), -1) {
		if len(m) < 2 {
			ts.Fatalf("%q captures no number", args[0])
		}
		i, err := strconv.Atoi(m[1])
		ts.Check(err)
		n = append(n, i)
	}
	if len(n) < 2 {
		ts.Fatalf("%d numbers matching %q in stdout, want at least 2", len(n), args[0])
	}
	for i := 1; i < len(n); i++ {
		if n[i] != n[i-1]+1 {
			ts.Fatalf("numbers %v: a line lost or repeated", n)
		}
	}
}

// lockedBuffer is a bytes.Buffer the CLI writes to while the test reads.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func (s *session) cmdStatus(ts *testscript.TestScript, neg bool, args []string) {
	if len(args) != 1 {
		ts.Fatalf("usage: status N")
	}
	want, err := strconv.Atoi(args[0])
	ts.Check(err)
	switch {
	case !neg && s.last != want:
		ts.Fatalf("the last subbus exited %d, want %d", s.last, want)
	case neg && s.last == want:
		ts.Fatalf("the last subbus exited %d, want another status", s.last)
	}
}

func (s *session) condition(cond string) (bool, error) {
	if d, ok := strings.CutPrefix(cond, "driver:"); ok {
		return d == s.driver, nil
	}
	switch cond {
	case "exec":
		return s.caps.Exec, nil
	case "logs":
		return s.caps.Logs, nil
	case "limits":
		return s.caps.Limits, nil
	case "snapshots":
		return s.caps.Snapshots, nil
	case "clone":
		return s.caps.Clone, nil
	case "networks":
		return s.caps.Networks, nil
	case "events":
		return s.caps.Events, nil
	case "command":
		return s.command, nil
	case "env":
		return s.env, nil
	}
	return false, fmt.Errorf("unknown condition %q", cond)
}
