// Package procfs reads what the drivers that manage local processes need
// from Linux's /proc: a process's stat and I/O counters, its whole tree,
// whether a recorded (pid, start time) is still the same process, and
// usage samples of a tree with rates computed from the previous sample.
package procfs

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// ClockTicks is USER_HZ, the unit of the times in /proc/<pid>/stat. It is
// 100 on every Linux architecture Go supports (the kernel exports a fixed
// USER_HZ to user space), so it is not read through sysconf.
const ClockTicks = 100

// Stat is the part of /proc/<pid>/stat the drivers use.
type Stat struct {
	Pid        int
	PPid       int
	State      byte // R, S, D, Z, T, …
	PGrp       int
	CPUTicks   uint64 // utime+stime+cutime+cstime
	StartTicks uint64 // field 22: start time, clock ticks since boot
	RSSPages   int64  // field 24
}

// ErrNoProcess is returned for a pid that does not exist.
var ErrNoProcess = errors.New("no such process")

// ReadStat parses /proc/<pid>/stat. A missing process is ErrNoProcess.
func ReadStat(pid int) (Stat, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return Stat{}, ErrNoProcess
		}
		return Stat{}, err
	}
	return ParseStat(pid, b)
}

// ParseStat parses the content of a stat file. The command name (field 2)
// may contain spaces and parentheses, so fields are counted from the last ')'.
func ParseStat(pid int, b []byte) (Stat, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return Stat{}, fmt.Errorf("/proc/%d/stat: malformed", pid)
	}
	f := strings.Fields(string(b[i+2:]))
	// f[0] is field 3 (state); field n is f[n-3].
	if len(f) < 22 {
		return Stat{}, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f)+2)
	}
	num := func(n int) uint64 {
		v, _ := strconv.ParseUint(f[n-3], 10, 64)
		return v
	}
	inum := func(n int) int64 {
		v, _ := strconv.ParseInt(f[n-3], 10, 64)
		return v
	}
	s := Stat{
		Pid:        pid,
		State:      f[0][0],
		PPid:       int(inum(4)),
		PGrp:       int(inum(5)),
		StartTicks: num(22),
		RSSPages:   inum(24),
	}
	// utime(14) stime(15) cutime(16) cstime(17); the c-times are signed.
	s.CPUTicks = num(14) + num(15) + uint64(max(inum(16), 0)) + uint64(max(inum(17), 0))
	return s, nil
}

// Alive reports whether pid is the process that started at startTicks and
// has not exited (a zombie has exited).
func Alive(pid int, startTicks uint64) bool {
	if pid <= 0 {
		return false
	}
	s, err := ReadStat(pid)
	return err == nil && s.StartTicks == startTicks && s.State != 'Z' && s.State != 'X'
}

// BootID identifies the current boot, so start times recorded before a
// reboot are never compared with ones after it.
func BootID() string {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// Tree returns root and all its live descendants, found by scanning the
// ppid of every process (/proc/<pid>/task/*/children is not available on
// every kernel).
func Tree(root int) ([]Stat, error) {
	rs, err := ReadStat(root)
	if err != nil {
		return nil, err
	}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	children := map[int][]Stat{}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == root {
			continue
		}
		s, err := ReadStat(pid)
		if err != nil {
			continue // exited while scanning
		}
		children[s.PPid] = append(children[s.PPid], s)
	}
	out := []Stat{rs}
	for i := 0; i < len(out); i++ {
		out = append(out, children[out[i].Pid]...)
	}
	return out, nil
}

// ReadIO reads read_bytes and write_bytes from /proc/<pid>/io.
func ReadIO(pid int) (read, write uint64, err error) {
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/io")
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ": ")
		if !ok {
			continue
		}
		n, _ := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
		switch k {
		case "read_bytes":
			read = n
		case "write_bytes":
			write = n
		}
	}
	return read, write, sc.Err()
}
