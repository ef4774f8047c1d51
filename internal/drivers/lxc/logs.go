package lxc

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"time"

	"github.com/subbus/subbus/internal/drivers"
)

// maxConsole bounds one read of the console log; consoleKeep bounds what
// is kept of each running instance's console.
const (
	maxConsole  = 16 << 20
	consoleKeep = 1 << 20
)

// consoleLog returns the console output of an instance as far as it is
// known. GET /1.0/instances/<n>/console behaves differently by state:
//   - running: it returns what the console ring buffer holds that nobody
//     has read yet, and reading consumes it (liblxc moves the read
//     pointer and appends it to the on-disk console.log, which the API does
//     not serve); with nothing new it fails with "open : no such file".
//     So the driver keeps what it has read, per instance, bounded.
//   - stopped: it returns the on-disk console.log of the last run.
func (d *Driver) consoleLog(ctx context.Context, name string) ([]byte, error) {
	c, _, err := d.conn()
	if err != nil {
		return nil, err
	}
	in, _, err := d.get(ctx, name)
	if err != nil {
		return nil, err
	}
	d.consoleMu.Lock()
	defer d.consoleMu.Unlock()
	b, err := c.file(ctx, "/1.0/instances/"+esc(name)+"/console", maxConsole)
	if err != nil {
		var ae *apiError
		if !errors.As(err, &ae) || ae.Status != 500 || !strings.Contains(ae.Msg, "no such file") {
			return nil, err
		}
		b = nil // nothing (new) to read
	}
	if d.consoles == nil {
		d.consoles = map[string][]byte{}
	}
	if normState(in.StatusCode, in.Status) != drivers.StateRunning {
		if len(b) > 0 {
			d.consoles[name] = tail(b, consoleKeep)
		}
		return d.consoles[name], nil
	}
	acc := append(d.consoles[name], b...)
	acc = tail(acc, consoleKeep)
	d.consoles[name] = acc
	return acc, nil
}

// tail returns (a copy of) at most the last n bytes of b, cut after a
// newline when it has to cut.
func tail(b []byte, n int) []byte {
	if len(b) <= n {
		return b
	}
	b = b[len(b)-n:]
	if i := bytes.IndexByte(b, '\n'); i >= 0 {
		b = b[i+1:]
	}
	return append([]byte(nil), b...)
}

// completeLines splits b into its complete lines (without "\r\n" or
// "\n") and returns how many bytes they span.
func completeLines(b []byte) ([]string, int) {
	end := bytes.LastIndexByte(b, '\n') + 1
	if end == 0 {
		return nil, 0
	}
	raw := strings.Split(string(b[:end-1]), "\n")
	out := make([]string, 0, len(raw))
	for _, l := range raw {
		out = append(out, strings.TrimRight(l, "\r"))
	}
	return out, end
}

// LogFormat: the console is one stream, in the order it was written; LXD
// keeps no times, so lines carry none (not the time they were read).
func (d *Driver) LogFormat() drivers.LogFormat { return drivers.LogFormat{Ordered: true} }

// Logs emits the last opts.Lines lines of the console log and, with
// Follow, polls it (there is no follow in the API) and emits what was
// appended. The console buffer is a bounded ring, so "appended" is found
// by locating the tail already emitted in the new content; when it is
// gone (the instance restarted, or the ring wrapped past it) the whole
// new content is emitted.
func (d *Driver) Logs(ctx context.Context, name string, opts drivers.LogOptions, emit func(drivers.LogLine) error) error {
	b, err := d.consoleLog(ctx, name)
	if err != nil {
		return err
	}
	lines, used := completeLines(b)
	if n := opts.Lines; n > 0 && len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	for _, l := range lines {
		if err := emit(drivers.LogLine{Stream: "console", Line: l}); err != nil {
			return err
		}
	}
	if !opts.Follow {
		return nil
	}
	f := follower{consumed: b[:used]}
	tick := time.NewTicker(time.Duration(d.opts.LogPollInterval))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		b, err := d.consoleLog(ctx, name)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		for _, l := range f.next(b) {
			if err := emit(drivers.LogLine{Stream: "console", Line: l}); err != nil {
				return err
			}
		}
	}
}

// follower finds what was appended to a polled log.
type follower struct {
	consumed []byte // content up to the end of the last emitted line
}

// anchorLen is how much of the already emitted tail is searched for.
const anchorLen = 512

// next returns the complete lines in b after what was emitted before.
func (f *follower) next(b []byte) []string {
	start := 0
	switch {
	case len(f.consumed) == 0:
	case bytes.HasPrefix(b, f.consumed):
		start = len(f.consumed) // appended to
	default:
		anchor := f.consumed[max(0, len(f.consumed)-anchorLen):]
		if i := bytes.LastIndex(b, anchor); i >= 0 {
			start = i + len(anchor) // the head was dropped, the tail is there
		} else {
			start = overlap(f.consumed, b)
		}
	}
	lines, used := completeLines(b[start:])
	if used > 0 || start == 0 {
		f.consumed = append(f.consumed[:0:0], b[:start+used]...)
	}
	return lines
}

// overlap returns the length of the longest head of b, ending at a line
// end, that is also the tail of consumed (0 when there is none: b is new
// content). It is the slow path, for when even the anchor was dropped.
func overlap(consumed, b []byte) int {
	limit := min(len(b), len(consumed), 64<<10)
	best := 0
	for i := 0; i < limit; i++ {
		if b[i] == '\n' && bytes.HasSuffix(consumed, b[:i+1]) {
			best = i + 1
		}
	}
	return best
}
