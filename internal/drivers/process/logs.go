package process

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/subbus/subbus/internal/drivers"
)

// streams are the output files of an instance: <stream>.log, rotated to
// <stream>.log.1 (newest) … <stream>.log.<log_keep>.
var streams = []string{"stdout", "stderr"}

// maxLine bounds a line: longer output without a newline is cut into
// lines of this size.
const maxLine = 64 << 10

// followInterval is how often Logs(Follow) polls the files for growth.
const followInterval = 150 * time.Millisecond

func (d *Driver) logPath(name, stream string, gen int) string {
	p := filepath.Join(d.instanceDir(name), stream+".log")
	if gen > 0 {
		p += "." + strconv.Itoa(gen)
	}
	return p
}

// pipeSize is the capacity asked for each output pipe (F_SETPIPE_SZ; the
// kernel's default maximum for unprivileged users). It is what an instance
// can write while no worker reads its output before its writes block.
const pipeSize = 1 << 20

// pumpBuffer is how much one pump reads at a time, and so the most output
// of one stream a worker killed with SIGKILL can lose (read, not written).
const pumpBuffer = 64 << 10

// stampLayout is the time each line of a log file starts with, in UTC and
// of fixed width, followed by one space: the line as written is the rest
// ("2026-11-30T07:18:37.123456789Z hello"), the format of `docker logs
// -t`. It is the time the worker read the line from the instance's pipe.
const stampLayout = "2006-01-02T15:04:05.000000000Z07:00"

// stampLen is the length of a stamp with its space.
const stampLen = len("2006-01-02T15:04:05.000000000Z") + 1

// appendStamp appends the stamp of t.
func appendStamp(b []byte, t time.Time) []byte {
	return append(t.UTC().AppendFormat(b, stampLayout), ' ')
}

// parseStamp splits a stored line into its time and text; a line without
// a stamp (written before stamps, or the rest of a line cut in two) has a
// zero time and is returned whole.
func parseStamp(line string) (time.Time, string) {
	if len(line) < stampLen || line[stampLen-1] != ' ' || line[4] != '-' {
		return time.Time{}, line
	}
	t, err := time.Parse(stampLayout, line[:stampLen-1])
	if err != nil {
		return time.Time{}, line
	}
	return t, line[stampLen:]
}

// logWriter appends one output stream of an instance to <stream>.log and
// enforces the bound while writing: a write that would take the file past
// LogMaxBytes first fills it up to its last complete line, then rotates
// (<stream>.log becomes .1, older generations shift up, the one beyond
// LogKeep is removed) and continues in a new file. A line longer than
// LogMaxBytes is cut. So no file ever exceeds LogMaxBytes and a stream never
// holds more than (LogKeep+1) x LogMaxBytes.
//
// Writes are synchronous: when the disk is slow, the pump reading the
// instance's pipe waits, the pipe fills and the instance's writes block
// (backpressure, nothing dropped). A write that fails (disk full, instance
// deleted) drops that data and counts it in dropped.
//
// Every line starts with the time it was read (stampLayout); a line that
// arrives in several reads keeps the time of its first part.
type logWriter struct {
	d      *Driver
	name   string
	stream string

	mu      sync.Mutex
	f       *os.File
	size    int64
	closed  bool
	dropped int64
	midLine bool // the last byte written was not a newline
}

// Write stamps the lines of b read at now and appends them; it never
// returns an error (see dropped).
func (w *logWriter) Write(b []byte, now time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(b) == 0 {
		return
	}
	stamped := make([]byte, 0, len(b)+2*stampLen)
	for len(b) > 0 {
		if !w.midLine {
			stamped = appendStamp(stamped, now)
			w.midLine = true
		}
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			stamped = append(stamped, b...)
			break
		}
		stamped = append(stamped, b[:i+1]...)
		b = b[i+1:]
		w.midLine = false
	}
	w.write(stamped)
}

// write appends stamped output, rotating as needed; w.mu is held.
func (w *logWriter) write(b []byte) {
	limit := w.d.opts.LogMaxBytes
	for len(b) > 0 {
		if w.closed {
			w.dropped += int64(len(b))
			return
		}
		if w.f == nil {
			f, err := os.OpenFile(w.d.logPath(w.name, w.stream, 0), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
			if err != nil {
				w.dropped += int64(len(b))
				return
			}
			fi, err := f.Stat()
			if err != nil {
				f.Close()
				w.dropped += int64(len(b))
				return
			}
			w.f, w.size = f, fi.Size()
		}
		room := max(limit-w.size, 0)
		n := int64(len(b))
		if n > room {
			n = room
			if i := bytes.LastIndexByte(b[:room], '\n'); i >= 0 {
				n = int64(i) + 1 // fill up to the last complete line
			} else if w.size > 0 {
				n = 0 // the line starts the next file
			}
		}
		if n > 0 {
			m, err := w.f.Write(b[:n])
			w.size += int64(m)
			if err != nil {
				w.dropped += int64(len(b) - m)
				return
			}
			b = b[n:]
		}
		if w.size >= limit || len(b) > 0 {
			w.rotate()
		}
	}
}

// rotate closes the current file and shifts the generations; w.mu is held.
func (w *logWriter) rotate() {
	_ = w.f.Close()
	w.f, w.size = nil, 0
	d := w.d
	d.rotMu.Lock()
	defer d.rotMu.Unlock()
	_ = os.Remove(d.logPath(w.name, w.stream, d.opts.LogKeep))
	for g := d.opts.LogKeep - 1; g >= 1; g-- {
		_ = os.Rename(d.logPath(w.name, w.stream, g), d.logPath(w.name, w.stream, g+1))
	}
	_ = os.Rename(d.logPath(w.name, w.stream, 0), d.logPath(w.name, w.stream, 1))
}

// close ends writing: later writes are dropped (the instance was deleted
// or the driver closed).
func (w *logWriter) close() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.closed = true
	if w.f != nil {
		_ = w.f.Close()
		w.f = nil
	}
}

func (w *logWriter) droppedBytes() int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.dropped
}

// outputPipes makes the two output pipes of a process being started: the
// write ends become its stdout and stderr, and the read ends are passed to
// it too (as fds 3 and 4) so that the pipes keep a reader while no worker
// runs (its writes then block once the pipe is full, instead of failing
// with EPIPE). The worker reads through its own descriptions of the pipes
// (openPipe). All four files are blocking and close-on-exec in the worker.
func outputPipes() (w, r [2]*os.File, err error) {
	for i := range 2 {
		var p [2]int
		if err = syscall.Pipe2(p[:], syscall.O_CLOEXEC); err != nil {
			closeAll(w[:i])
			closeAll(r[:i])
			return w, r, err
		}
		// Best effort: a smaller pipe only means less slack while no worker runs.
		_, _, _ = syscall.Syscall(syscall.SYS_FCNTL, uintptr(p[1]), syscall.F_SETPIPE_SZ, pipeSize)
		r[i] = os.NewFile(uintptr(p[0]), "output-r")
		w[i] = os.NewFile(uintptr(p[1]), "output-w")
	}
	return w, r, nil
}

func closeAll(fs []*os.File) {
	for _, f := range fs {
		if f != nil {
			_ = f.Close()
		}
	}
}

// openPipe opens a new read description of the pipe that path (a
// /proc/<pid>/fd/<n> link) refers to: non-blocking, so the pump's reads go
// through the runtime poller and Close interrupts them. Linux opens a pipe
// through /proc like a FIFO; a process's fds can be opened by root or by
// its own user.
func openPipe(path string) (*os.File, error) {
	link, err := os.Readlink(path)
	if err != nil {
		return nil, err
	}
	if !strings.HasPrefix(link, "pipe:") {
		return nil, fmt.Errorf("%s is %s, not a pipe", path, link)
	}
	fd, err := syscall.Open(path, syscall.O_RDONLY|syscall.O_NONBLOCK|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	return os.NewFile(uintptr(fd), link), nil
}

// startPumps reads the output pipes of in's process (the /proc fd links
// in paths, stdout's then stderr's) into its log writers until every writer
// of the pipe has closed it (EOF) or the driver closes. d.mu is held.
func (d *Driver) startPumps(in *inst, paths [2]string) error {
	wg := &sync.WaitGroup{}
	in.pumps = wg
	for i, s := range streams {
		r, err := openPipe(paths[i])
		if err != nil {
			return err
		}
		if in.logs[i] == nil {
			in.logs[i] = &logWriter{d: d, name: in.rec.Name, stream: s}
		}
		w := in.logs[i]
		d.pumpMu.Lock()
		d.pumps[r] = struct{}{}
		d.pumpMu.Unlock()
		d.pumpWG.Add(1)
		wg.Add(1)
		go func() { defer wg.Done(); d.pump(r, w) }()
	}
	return nil
}

// pump copies one pipe into one log writer.
func (d *Driver) pump(r *os.File, w *logWriter) {
	defer d.pumpWG.Done()
	buf := make([]byte, pumpBuffer)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			w.Write(buf[:n], time.Now())
		}
		if err != nil {
			break
		}
	}
	d.pumpMu.Lock()
	delete(d.pumps, r)
	d.pumpMu.Unlock()
	_ = r.Close()
}

// streamTail is the tail of one stream.
type streamTail struct {
	stream string
	lines  []drivers.LogLine // with their stored times (timeLines)
	// offset is where following starts in the current file: its end, less
	// an unfinished last line.
	offset int64
}

// tail reads the last n lines of one stream across its generations. With
// complete, an unfinished last line is left out (following emits it once
// finished).
func (d *Driver) tail(name, stream string, n int, complete bool) (streamTail, error) {
	d.rotMu.Lock()
	defer d.rotMu.Unlock()
	st := streamTail{stream: stream}
	var lines []string
	var oldest time.Time // mtime of the oldest generation read
	for g := 0; g <= d.opts.LogKeep && len(lines) < n; g++ {
		b, size, whole, mtime, err := readTail(d.logPath(name, stream, g), n-len(lines)+1)
		if errors.Is(err, fs.ErrNotExist) {
			if g == 0 {
				continue
			}
			break
		}
		if err != nil {
			return st, err
		}
		oldest = mtime
		if g == 0 {
			st.offset = size
			if i := bytes.LastIndexByte(b, '\n'); complete && i < len(b)-1 {
				st.offset = size - int64(len(b)-(i+1))
				b = b[:i+1]
			}
		}
		got := splitLines(b)
		if !whole && len(got) > 0 {
			got = got[1:] // the first line may be cut
		}
		lines = append(got, lines...)
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	st.lines = timeLines(stream, lines, time.Time{}, oldest)
	return st, nil
}

// timeLines splits stored lines into time and text. A line without a
// stamp (the rest of a line cut in two, or a file written before stamps)
// takes the time of the line before it (prev for the first), else of the
// next stamped line, else fallback (the file's modification time).
func timeLines(stream string, lines []string, prev, fallback time.Time) []drivers.LogLine {
	out := make([]drivers.LogLine, len(lines))
	stamped := make([]bool, len(lines))
	for i, l := range lines {
		t, text := parseStamp(l)
		out[i] = drivers.LogLine{Time: t, Stream: stream, Line: text}
		stamped[i] = !t.IsZero()
	}
	next := fallback
	for i := len(out) - 1; i >= 0; i-- {
		if stamped[i] {
			next = out[i].Time
		} else {
			out[i].Time = next
		}
	}
	for i := range out {
		if !stamped[i] && !prev.IsZero() {
			out[i].Time = prev
		}
		prev = out[i].Time
		out[i].Time = out[i].Time.UTC()
	}
	return out
}

// mergeLines merges the lines of several streams, each in time order,
// into one list in time order (stable: equal times keep stream order).
func mergeLines(streams ...[]drivers.LogLine) []drivers.LogLine {
	var all []drivers.LogLine
	for _, s := range streams {
		all = append(all, s...)
	}
	sort.SliceStable(all, func(i, j int) bool { return all[i].Time.Before(all[j].Time) })
	return all
}

// tailChunk is how much readTail reads at a time, from the end.
const tailChunk = 64 << 10

// readTail reads the end of a file holding at least want lines (more
// newlines than want, so the first, possibly cut, line can be dropped) or
// the whole file (whole=true), without reading more of a large file than
// needed. size is the file size it saw.
func readTail(path string, want int) (b []byte, size int64, whole bool, mtime time.Time, err error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, false, time.Time{}, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, 0, false, time.Time{}, err
	}
	size, mtime = fi.Size(), fi.ModTime()
	pos := size
	for pos > 0 && bytes.Count(b, []byte{'\n'}) <= want {
		chunk := min(int64(tailChunk), pos)
		pos -= chunk
		buf := make([]byte, chunk)
		if _, err := f.ReadAt(buf, pos); err != nil && err != io.EOF {
			return nil, 0, false, mtime, err
		}
		b = append(buf, b...)
	}
	return b, size, pos == 0, mtime, nil
}

// splitLines splits b into lines without their newline; an unfinished
// last line is kept; over-long lines are cut.
func splitLines(b []byte) []string {
	var out []string
	for len(b) > 0 {
		i := bytes.IndexByte(b, '\n')
		var line []byte
		if i < 0 {
			line, b = b, nil
		} else {
			line, b = b[:i], b[i+1:]
		}
		for len(line) > maxLine {
			out = append(out, string(line[:maxLine]))
			line = line[maxLine:]
		}
		out = append(out, string(line))
	}
	return out
}

// LogFormat: the worker stamps each line with the time it read it from
// the instance's pipe, and merges the two streams by those times.
func (d *Driver) LogFormat() drivers.LogFormat { return drivers.LogFormat{Times: true, Ordered: true} }

// Logs emits the last opts.Lines lines of stdout and stderr, merged in
// time order by the stamps the worker wrote (lines written on different
// streams less than a scheduling quantum apart may come in either order).
// With Follow it then polls the files for new lines (surviving rotation)
// until ctx ends, emitting each poll's lines in time order.
func (d *Driver) Logs(ctx context.Context, name string, opts drivers.LogOptions, emit func(drivers.LogLine) error) error {
	d.mu.Lock()
	_, err := d.lookup(name)
	d.mu.Unlock()
	if err != nil {
		return err
	}
	n := opts.Lines
	if n <= 0 {
		n = 100
	}
	var tails []streamTail
	var lines [][]drivers.LogLine
	for _, s := range streams {
		t, err := d.tail(name, s, n, opts.Follow)
		if err != nil {
			return fmt.Errorf("reading logs of %s: %w", name, err)
		}
		tails = append(tails, t)
		lines = append(lines, t.lines)
	}
	all := mergeLines(lines...)
	if len(all) > n {
		all = all[len(all)-n:]
	}
	for _, l := range all {
		if err := emit(l); err != nil {
			return err
		}
	}
	if !opts.Follow {
		return nil
	}
	followers := make([]*follower, 0, len(tails))
	for _, t := range tails {
		followers = append(followers, &follower{d: d, name: name, stream: t.stream, offset: t.offset})
	}
	tk := time.NewTicker(followInterval)
	defer tk.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tk.C:
		}
		var fresh [][]drivers.LogLine
		for _, f := range followers {
			fresh = append(fresh, f.poll())
		}
		for _, l := range mergeLines(fresh...) {
			if err := emit(l); err != nil {
				return err
			}
		}
	}
}

// follower reads what was appended to one stream since offset.
type follower struct {
	d       *Driver
	name    string
	stream  string
	offset  int64
	partial []byte
	last    time.Time // time of the last line returned
}

// poll returns the complete new lines of the stream. When the file shrank
// (a copy-truncate rotation), the rest of the previous content is read
// from generation 1 first.
func (f *follower) poll() []drivers.LogLine {
	f.d.rotMu.Lock()
	var data []byte
	cur := f.d.logPath(f.name, f.stream, 0)
	fi, err := os.Stat(cur)
	if err == nil && fi.Size() < f.offset {
		if rest, err := readFrom(f.d.logPath(f.name, f.stream, 1), f.offset); err == nil {
			data = append(data, rest...)
		}
		f.offset = 0
	}
	if err == nil && fi.Size() > f.offset {
		if more, err := readFrom(cur, f.offset); err == nil {
			data = append(data, more...)
			f.offset += int64(len(more))
		}
	}
	f.d.rotMu.Unlock()
	if len(data) == 0 {
		return nil
	}
	buf := append(f.partial, data...)
	i := bytes.LastIndexByte(buf, '\n')
	if i < 0 {
		if len(buf) < maxLine {
			f.partial = buf
			return nil
		}
		i = len(buf) - 1 // emit an over-long unfinished line as it is
	}
	complete := buf[:i+1]
	f.partial = append([]byte(nil), buf[i+1:]...)
	out := timeLines(f.stream, completeLines(complete), f.last, time.Now())
	if len(out) > 0 {
		f.last = out[len(out)-1].Time
	}
	return out
}

// completeLines splits b, which ends with a newline (or is an over-long
// unfinished line), into its lines, empty ones included.
func completeLines(b []byte) []string {
	if b[len(b)-1] == '\n' {
		b = b[:len(b)-1]
	}
	var out []string
	for _, line := range bytes.Split(b, []byte{'\n'}) {
		for len(line) > maxLine {
			out = append(out, string(line[:maxLine]))
			line = line[maxLine:]
		}
		out = append(out, string(line))
	}
	return out
}

// readFrom reads a file from offset to its end.
func readFrom(path string, offset int64) ([]byte, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer fh.Close()
	if _, err := fh.Seek(offset, io.SeekStart); err != nil {
		return nil, err
	}
	return io.ReadAll(fh)
}
