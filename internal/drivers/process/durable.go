package process

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/internal/procfs"
)

// Intent before effect. Every step that changes the world outside the
// state directory (spawning a process) is preceded by a durable record of
// the intent and followed by a durable confirmation, and every process the
// driver spawns carries a marker in its environment naming the state
// directory's owner id, the instance id and the start's nonce:
//
//	SUBBUS_PROCESS_MARK=<owner>.<instance id>.<nonce>
//
// Connect reconciles the records with the processes it finds by that marker
// (reconcile), so a worker killed at any instant leaves no process nobody
// owns, no duplicate, and no instance that cannot be listed or deleted.

// markEnv is the environment variable that marks the driver's processes.
const markEnv = "SUBBUS_PROCESS_MARK"

// startIntent is recorded (fsync'd) before a process is spawned.
type startIntent struct {
	Nonce   string    `json:"nonce"`
	Planned time.Time `json:"planned"`
}

// faultHook, when set (by the crash tests only), is called at each named
// step of a mutation, so a test can kill the worker exactly there.
var faultHook func(point string)

func fault(point string) {
	if faultHook != nil {
		faultHook(point)
	}
}

// markOf is the marker value of one start of instance id.
func (d *Driver) markOf(id, nonce string) string { return d.owner + "." + id + "." + nonce }

// loadOwner reads <state_dir>/owner, creating it with a random id the first
// time. The id tells this state directory's processes from those of any
// other driver on the host.
func (d *Driver) loadOwner() error {
	p := filepath.Join(d.opts.StateDir, "owner")
	b, err := os.ReadFile(p)
	if err == nil && len(bytes.TrimSpace(b)) > 0 {
		d.owner = string(bytes.TrimSpace(b))
		return nil
	}
	if err != nil && !os.IsNotExist(err) {
		return err
	}
	id := newID()
	if err := writeFileAtomic(p, []byte(id+"\n")); err != nil {
		return err
	}
	d.owner = id
	return nil
}

// markedProc is a live process carrying this owner's marker.
type markedProc struct {
	pid   int
	ticks uint64
	id    string
	nonce string
	sid   int
}

// scanMarked lists the live processes carrying this owner's marker. A
// process whose environment cannot be read (another user's, as non-root)
// is not ours: the driver only spawns processes it can read.
func (d *Driver) scanMarked() []markedProc {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	needle := []byte(markEnv + "=" + d.owner + ".")
	self := os.Getpid()
	var out []markedProc
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		env, err := os.ReadFile("/proc/" + e.Name() + "/environ")
		if err != nil {
			continue
		}
		var val []byte
		for _, kv := range bytes.Split(env, []byte{0}) {
			if bytes.HasPrefix(kv, needle) {
				val = kv[len(needle):]
				break
			}
		}
		if val == nil {
			continue
		}
		id, nonce, ok := strings.Cut(string(val), ".")
		if !ok {
			continue
		}
		st, err := procfs.ReadStat(pid)
		if err != nil || st.State == 'Z' || st.State == 'X' {
			continue
		}
		out = append(out, markedProc{pid: pid, ticks: st.StartTicks, id: id, nonce: nonce, sid: sessionOf(pid)})
	}
	return out
}

// sessionOf is field 6 of /proc/<pid>/stat, 0 when unreadable.
func sessionOf(pid int) int {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 4 {
		return 0
	}
	sid, _ := strconv.Atoi(f[3])
	return sid
}

// cleanTemp removes what an interrupted write or delete left: temporary
// files (.tmp-*) in the state directory and in every instance directory,
// and instance directories without a state file (a crash during create
// before the state file was renamed into place, or during delete after it
// was removed). d.mu is held.
func (d *Driver) cleanTemp() {
	removeTemps := func(dir string) {
		es, _ := os.ReadDir(dir)
		for _, e := range es {
			if strings.HasPrefix(e.Name(), ".tmp-") {
				_ = os.Remove(filepath.Join(dir, e.Name()))
			}
		}
	}
	removeTemps(d.opts.StateDir)
	removeTemps(d.instancesDir())
	es, _ := os.ReadDir(d.instancesDir())
	for _, e := range es {
		if !e.IsDir() || drivers.ValidateName("name", e.Name()) != nil {
			continue
		}
		dir := filepath.Join(d.instancesDir(), e.Name())
		removeTemps(dir)
		if _, err := os.Stat(filepath.Join(dir, "instance.json")); os.IsNotExist(err) {
			_ = os.RemoveAll(dir)
		}
	}
}

// reconcile settles every record against the processes that exist; it
// runs in Connect with d.mu held, after the records are loaded:
//
//   - a record with a start intent: the process of that start (found by
//     its marker, as the leader of its own session) is adopted; when there
//     is none the start never happened and the instance stays stopped;
//   - a record that says running: re-adopted when its pid still has the
//     recorded start time and boot id, else stopped (exit unknown);
//   - every marked process that no record owns (a start nobody confirmed
//     and whose record is gone, a duplicate, a straggler of a stopped or
//     deleted instance) is killed with SIGKILL.
func (d *Driver) reconcile() {
	marked := d.scanMarked()
	for name, in := range d.insts {
		r := in.rec
		if r.Starting != nil {
			d.settleStart(in, marked)
		}
		if r.State != drivers.StateRunning {
			continue
		}
		if r.BootID == d.boot && procfs.Alive(r.Pid, r.StartTicks) {
			// The same process: re-adopt it and watch it by polling /proc.
			in.done = make(chan struct{})
			if r.Nonce == "" {
				// Started by a version that gave the process its log files
				// directly: it keeps writing them (unrotated) until restarted.
				d.issues = append(d.issues, fmt.Sprintf("%s: started by an older worker, its logs are not rotated until it is restarted", name))
			} else if err := d.startPumps(in, pipePaths(r.Pid)); err != nil {
				d.issues = append(d.issues, fmt.Sprintf("%s: output of pid %d not re-attached (%v): its writes block once its pipe is full", name, r.Pid, err))
			}
			d.bgWG.Add(1)
			go d.pollExit(in, r.Pid, r.StartTicks, in.done)
			continue
		}
		// It exited (or the pid now belongs to another process) while no
		// worker was watching: its exit status is unknown.
		r.State = drivers.StateStopped
		r.Native = fmt.Sprintf("exited while the worker was down (pid %d, status unknown)", r.Pid)
		r.Pid, r.StartTicks = 0, 0
		r.ExitedAt = time.Now()
		if err := d.writeRecord(r); err != nil {
			d.issues = append(d.issues, fmt.Sprintf("%s: %v", name, err))
		}
		d.backlog = append(d.backlog, drivers.Event{
			Type: drivers.EventStopped, Instance: name, Time: r.ExitedAt, State: r.State,
			Details: map[string]string{"reason": "exited while the worker was down"},
		})
	}
	owned := map[string]string{} // instance id -> nonce of its running process
	for _, in := range d.insts {
		if in.rec.State == drivers.StateRunning && in.rec.Nonce != "" {
			owned[in.rec.ID] = in.rec.Nonce
		}
	}
	for _, p := range marked {
		if n, ok := owned[p.id]; ok && n == p.nonce {
			continue
		}
		if procfs.Alive(p.pid, p.ticks) {
			_ = syscall.Kill(p.pid, syscall.SIGKILL)
			d.reaped++
		}
	}
}

// pipePaths are the /proc links through which the output pipes of a
// running instance's main process are opened again: the read ends it was
// started with (fds 3 and 4; openPipe checks that they are pipes). Only
// records with a Nonce (started with pipes) are re-attached this way.
func pipePaths(pid int) [2]string {
	return [2]string{fmt.Sprintf("/proc/%d/fd/3", pid), fmt.Sprintf("/proc/%d/fd/4", pid)}
}

// settleStart resolves a start interrupted between its intent and its
// confirmation. d.mu is held.
func (d *Driver) settleStart(in *inst, marked []markedProc) {
	r := in.rec
	intent := r.Starting
	r.Starting = nil
	var leader *markedProc
	for i, p := range marked {
		if p.id == r.ID && p.nonce == intent.Nonce && p.sid == p.pid {
			leader = &marked[i]
			break
		}
	}
	if leader != nil {
		r.State, r.Native = drivers.StateRunning, ""
		r.Pid, r.StartTicks, r.BootID, r.Nonce = leader.pid, leader.ticks, d.boot, intent.Nonce
		r.StartedAt = intent.Planned
		r.ExitedAt, r.ExitCode, r.ExitSignal = time.Time{}, nil, ""
		d.backlog = append(d.backlog, drivers.Event{
			Type: drivers.EventStarted, Instance: r.Name, Time: time.Now().UTC(), State: r.State,
			Details: map[string]string{"pid": strconv.Itoa(leader.pid), "reason": "start confirmed after a worker restart"},
		})
	} else if r.State != drivers.StateRunning {
		r.Native = "start interrupted by a worker restart (no process was left)"
	}
	if err := d.writeRecord(r); err != nil {
		d.issues = append(d.issues, fmt.Sprintf("%s: %v", r.Name, err))
	}
}
