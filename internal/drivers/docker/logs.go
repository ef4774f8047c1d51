package docker

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/moby/moby/client"

	"github.com/subbus/subbus/internal/drivers"
)

// LogFormat: the daemon timestamps every line and returns both streams
// interleaved in time order.
func (d *Driver) LogFormat() drivers.LogFormat { return drivers.LogFormat{Times: true, Ordered: true} }

// Logs implements drivers.LogReader for TTY containers (one "console"
// stream) and non-TTY ones (stdout and stderr demultiplexed). Lines carry
// the daemon's timestamps.
func (d *Driver) Logs(ctx context.Context, name string, opts drivers.LogOptions, emit func(drivers.LogLine) error) error {
	ins, err := d.inspect(ctx, name)
	if err != nil {
		return err
	}
	c, err := d.client()
	if err != nil {
		return err
	}
	lines := opts.Lines
	if lines <= 0 {
		lines = 100
	}
	rc, err := c.ContainerLogs(ctx, ins.ID, client.ContainerLogsOptions{
		ShowStdout: true,
		ShowStderr: true,
		Timestamps: true,
		Follow:     opts.Follow,
		Tail:       strconv.Itoa(lines),
	})
	if err != nil {
		if ctx.Err() != nil && opts.Follow {
			return nil
		}
		return fmt.Errorf("logs of %s: %w", name, err)
	}
	defer rc.Close()

	tty := ins.Config != nil && ins.Config.Tty
	// Lines of both streams go through one channel so emit is called
	// from this goroutine only, in arrival order.
	type item struct {
		line drivers.LogLine
		err  error
	}
	ch := make(chan item)
	done := make(chan struct{})
	defer close(done)
	send := func(it item) bool {
		select {
		case ch <- it:
			return true
		case <-done:
			return false
		}
	}
	scan := func(r io.Reader, stream string) {
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 64*1024), 1024*1024)
		for sc.Scan() {
			if !send(item{line: parseLogLine(sc.Text(), stream)}) {
				return
			}
		}
	}
	go func() {
		var err error
		if tty {
			scan(rc, "console")
		} else {
			// One reader of the multiplexed stream keeps the daemon's
			// order across stdout and stderr (two demultiplexed readers
			// would race).
			err = readFrames(rc, func(l drivers.LogLine) bool { return send(item{line: l}) })
		}
		send(item{err: errOrEOF(err)})
	}()
	for {
		select {
		case it := <-ch:
			if it.err != nil {
				if errors.Is(it.err, io.EOF) || ctx.Err() != nil {
					return nil
				}
				return fmt.Errorf("logs of %s: %w", name, it.err)
			}
			if err := emit(it.line); err != nil {
				return err
			}
		case <-ctx.Done():
			if opts.Follow {
				return nil
			}
			return fmt.Errorf("logs of %s: %w", name, ctx.Err())
		}
	}
}

// readFrames reads the multiplexed log stream of a non-TTY container:
// frames of an 8-byte header (stream byte, 3 zero bytes, big-endian
// length) and a payload, one log message each, "<RFC 3339 time> <text>",
// ending with a newline unless the daemon split a long line into partial
// messages (the continuations are appended to the line, which keeps the
// time of its first part). send returns false when the reader is gone.
func readFrames(r io.Reader, send func(drivers.LogLine) bool) error {
	var (
		hdr     [8]byte
		pending = map[byte]*drivers.LogLine{}
	)
	for {
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			if errors.Is(err, io.EOF) {
				for _, st := range []byte{1, 2} {
					if p := pending[st]; p != nil && !send(*p) {
						return nil
					}
				}
			}
			return err
		}
		n := binary.BigEndian.Uint32(hdr[4:])
		if n > maxFrame {
			return fmt.Errorf("log frame of %d bytes", n)
		}
		buf := make([]byte, n)
		if _, err := io.ReadFull(r, buf); err != nil {
			return err
		}
		var stream string
		switch hdr[0] {
		case 1:
			stream = "stdout"
		case 2:
			stream = "stderr"
		case 3:
			return fmt.Errorf("daemon error in the log stream: %s", strings.TrimSpace(string(buf)))
		default:
			continue
		}
		text := string(buf)
		complete := strings.HasSuffix(text, "\n")
		text = strings.TrimSuffix(text, "\n")
		l := parseLogLine(text, stream)
		if p := pending[hdr[0]]; p != nil {
			p.Line += l.Line
			l = *p
		}
		if !complete {
			pending[hdr[0]] = &l
			continue
		}
		delete(pending, hdr[0])
		if !send(l) {
			return nil
		}
	}
}

// maxFrame bounds one frame of the log stream (the daemon's are 16 KiB).
const maxFrame = 16 << 20

func errOrEOF(err error) error {
	if err == nil {
		return io.EOF
	}
	return err
}

// parseLogLine splits the RFC 3339 timestamp Docker prefixes.
func parseLogLine(s, stream string) drivers.LogLine {
	s = strings.TrimSuffix(s, "\r")
	l := drivers.LogLine{Stream: stream, Line: s}
	if ts, rest, ok := strings.Cut(s, " "); ok {
		if t, err := time.Parse(time.RFC3339Nano, ts); err == nil {
			l.Time, l.Line = t, rest
		}
	}
	return l
}
