package e2etest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"strconv"
	"strings"
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
//	status N                    the last subbus exited with status N
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
			"subbus": ss.cmdSubbus,
			"await":  ss.cmdAwait,
			"status": ss.cmdStatus,
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

func (s *session) cmdStatus(ts *testscript.TestScript, neg bool, args []string) {
	if len(args) != 1 {
		ts.Fatalf("usage: status N")
	}
	want, err := strconv.Atoi(args[0])
	ts.Check(err)
	if (s.last == want) == neg {
		ts.Fatalf("the last subbus exited %d, want %s%d", s.last, map[bool]string{true: "not ", false: ""}[neg], want)
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
