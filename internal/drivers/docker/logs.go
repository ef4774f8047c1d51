package docker

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/moby/moby/api/pkg/stdcopy"
	"github.com/moby/moby/client"

	"github.com/subbus/subbus/internal/drivers"
)

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
			outR, outW := io.Pipe()
			errR, errW := io.Pipe()
			fin := make(chan struct{}, 2)
			go func() { scan(outR, "stdout"); outR.CloseWithError(io.EOF); fin <- struct{}{} }()
			go func() { scan(errR, "stderr"); errR.CloseWithError(io.EOF); fin <- struct{}{} }()
			_, err = stdcopy.StdCopy(outW, errW, rc)
			outW.Close()
			errW.Close()
			<-fin
			<-fin
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
