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

// openLogs opens the output files for appending (O_APPEND, so the process
// keeps writing at the end after a copy-truncate rotation).
func (d *Driver) openLogs(name string) (stdout, stderr *os.File, err error) {
	open := func(stream string) (*os.File, error) {
		return os.OpenFile(d.logPath(name, stream, 0), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	}
	if stdout, err = open("stdout"); err != nil {
		return nil, nil, err
	}
	if stderr, err = open("stderr"); err != nil {
		stdout.Close()
		return nil, nil, err
	}
	return stdout, stderr, nil
}

// rotateLoop checks the size of every instance's output files every
// LogCheckInterval, until the driver closes.
func (d *Driver) rotateLoop(ctx context.Context) {
	defer d.bgWG.Done()
	tk := time.NewTicker(time.Duration(d.opts.LogCheckInterval))
	defer tk.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tk.C:
		}
		d.mu.Lock()
		var names []string
		for n, in := range d.insts {
			if in.rec.State == drivers.StateRunning {
				names = append(names, n)
			}
		}
		d.mu.Unlock()
		for _, n := range names {
			d.rotate(n)
		}
	}
}

// rotate rotates each output file of name larger than LogMaxBytes by
// copy-truncate: the process keeps its file descriptor (it writes with
// O_APPEND), older generations shift up, the oldest beyond LogKeep is
// dropped. Output written between the copy and the truncation is lost.
func (d *Driver) rotate(name string) {
	d.rotMu.Lock()
	defer d.rotMu.Unlock()
	for _, s := range streams {
		cur := d.logPath(name, s, 0)
		st, err := os.Stat(cur)
		if err != nil || st.Size() <= d.opts.LogMaxBytes {
			continue
		}
		_ = os.Remove(d.logPath(name, s, d.opts.LogKeep))
		for g := d.opts.LogKeep - 1; g >= 1; g-- {
			_ = os.Rename(d.logPath(name, s, g), d.logPath(name, s, g+1))
		}
		if err := copyFile(cur, d.logPath(name, s, 1)); err != nil {
			continue
		}
		_ = os.Truncate(cur, 0)
	}
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// streamTail is the tail of one stream.
type streamTail struct {
	stream string
	lines  []string
	mtime  time.Time
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
		if g == 0 {
			st.mtime = mtime
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
	st.lines = lines
	return st, nil
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

// Logs emits the last opts.Lines lines of stdout and stderr. The process
// writes its files directly, so lines carry no time and the two streams
// cannot be interleaved exactly: the stream written last comes last. With
// Follow it then polls the files for new lines (surviving rotation) until
// ctx ends.
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
	for _, s := range streams {
		t, err := d.tail(name, s, n, opts.Follow)
		if err != nil {
			return fmt.Errorf("reading logs of %s: %w", name, err)
		}
		tails = append(tails, t)
	}
	sort.SliceStable(tails, func(i, j int) bool { return tails[i].mtime.Before(tails[j].mtime) })
	var all []drivers.LogLine
	for _, t := range tails {
		for _, l := range t.lines {
			all = append(all, drivers.LogLine{Stream: t.stream, Line: l})
		}
	}
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
		for _, f := range followers {
			if err := f.poll(emit); err != nil {
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
}

// poll emits the complete new lines of the stream. When the file shrank
// (a copy-truncate rotation), the rest of the previous content is read
// from generation 1 first.
func (f *follower) poll(emit func(drivers.LogLine) error) error {
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
	now := time.Now().UTC()
	for _, l := range completeLines(complete) {
		if err := emit(drivers.LogLine{Time: now, Stream: f.stream, Line: l}); err != nil {
			return err
		}
	}
	return nil
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
