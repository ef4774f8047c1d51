package supervisor

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/subbus/subbus/internal/drivers"
)

const (
	tailChunk   = 64 << 10 // first tail read; grows ×4 until it holds enough lines
	maxTail     = 8 << 20  // the most one tail reads
	readChunk   = 1 << 20  // the most one follow read takes
	followEvery = 250 * time.Millisecond
)

// stream is one of a program's two log files, as followed.
type stream struct {
	name    string // stdout, stderr
	offset  int64  // bytes consumed (the partial line included)
	partial string // a line without its newline yet
}

// LogFormat: supervisord keeps stdout and stderr in two files without
// times, so lines carry no time and only each stream's lines are in order.
func (d *Driver) LogFormat() drivers.LogFormat { return drivers.LogFormat{} }

// Logs emits the last opts.Lines lines of the program's logs. supervisord
// keeps stdout and stderr in separate files without timestamps, so they
// cannot be interleaved: the tail is stderr's lines then stdout's, cut to
// the last opts.Lines. With opts.Follow it then polls both files
// (tailProcess*Log for the size, readProcess*Log for the new bytes) every
// 250ms until ctx ends. A line still being written (no newline yet) is
// emitted at the end of a plain tail, and held back while following until
// it is complete.
func (d *Driver) Logs(ctx context.Context, name string, opts drivers.LogOptions, emit func(drivers.LogLine) error) error {
	c, cancel := d.ctx(ctx)
	p, err := d.rpc.getProcessInfo(c, name)
	cancel()
	if err != nil {
		return err
	}
	var streams []*stream
	if p.StderrLogfile != "" {
		streams = append(streams, &stream{name: "stderr"})
	}
	if p.StdoutLogfile != "" {
		streams = append(streams, &stream{name: "stdout"})
	}
	if len(streams) == 0 {
		return drivers.Errorf(drivers.NotFound, "program %q has no log files (stdout_logfile and stderr_logfile are NONE)", name)
	}

	var lines []drivers.LogLine
	for _, s := range streams {
		c, cancel := d.ctx(ctx)
		got, err := d.tailLines(c, name, s, opts.Lines)
		cancel()
		if err != nil {
			return err
		}
		for _, l := range got {
			lines = append(lines, drivers.LogLine{Stream: s.name, Line: l})
		}
		if !opts.Follow && s.partial != "" {
			lines = append(lines, drivers.LogLine{Stream: s.name, Line: s.partial})
		}
	}
	if len(lines) > opts.Lines {
		lines = lines[len(lines)-opts.Lines:]
	}
	for _, l := range lines {
		if err := emit(l); err != nil {
			return err
		}
	}
	if !opts.Follow {
		return nil
	}

	t := time.NewTicker(followEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		for _, s := range streams {
			if err := d.follow(ctx, name, s, emit); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return err
			}
		}
	}
}

// tailLines returns the last n whole lines of a stream, and sets s.offset
// to the log's size and s.partial to the unterminated line at its end.
func (d *Driver) tailLines(ctx context.Context, name string, s *stream, n int) ([]string, error) {
	for length := int64(tailChunk); ; length *= 4 {
		data, size, overflow, err := d.tailAligned(ctx, s.name, name, length)
		if err != nil {
			return nil, err
		}
		if overflow {
			// The data starts mid-line: drop up to the first newline.
			if i := strings.IndexByte(data, '\n'); i >= 0 {
				data = data[i+1:]
			} else {
				data = ""
			}
		}
		whole, partial := splitLines(data)
		if len(whole) >= n || !overflow || length >= maxTail {
			if len(whole) > n {
				whole = whole[len(whole)-n:]
			}
			s.offset = size
			s.partial = partial
			return whole, nil
		}
	}
}

// follow emits the whole lines written to a stream since s.offset.
func (d *Driver) follow(ctx context.Context, name string, s *stream, emit func(drivers.LogLine) error) error {
	c, cancel := d.ctx(ctx)
	defer cancel()
	// A zero-length tail returns the log's size without reading it.
	_, size, _, err := d.rpc.tail(c, s.name, name, s.offset, 0)
	if err != nil {
		return err
	}
	if size < s.offset {
		// Rotated or cleared: start again from the beginning.
		s.offset, s.partial = 0, ""
	}
	for size > s.offset {
		n := min(size-s.offset, readChunk)
		data, n, err := d.readAligned(c, s.name, name, s.offset, n)
		if err != nil {
			return err
		}
		if data == "" {
			return nil
		}
		// Count file bytes, not decoded ones: control characters arrive
		// replaced (see sanitizeXML).
		s.offset += n
		whole, partial := splitLines(s.partial + data)
		s.partial = partial
		for _, l := range whole {
			if err := emit(drivers.LogLine{Stream: s.name, Line: l}); err != nil {
				return err
			}
		}
	}
	return nil
}

// splitLines splits data into whole lines (without "\n" or "\r\n") and
// the unterminated rest.
func splitLines(data string) (whole []string, partial string) {
	for {
		i := strings.IndexByte(data, '\n')
		if i < 0 {
			return whole, data
		}
		whole = append(whole, strings.TrimSuffix(data[:i], "\r"))
		data = data[i+1:]
	}
}

// utf8Split reports whether err is supervisord failing to decode a log
// chunk as UTF-8: it reads logs as bytes and decodes them strictly, so a
// chunk that starts or ends inside a multi-byte character makes the call
// fail with an HTTP 500.
func utf8Split(err error) bool {
	var h *httpError
	return errors.As(err, &h) && h.status == http.StatusInternalServerError
}

// tailAligned is tail(0, length) that retries with up to three bytes less
// when the chunk would start inside a UTF-8 character.
func (d *Driver) tailAligned(ctx context.Context, stream, name string, length int64) (string, int64, bool, error) {
	var err error
	for cut := int64(0); cut < utf8.UTFMax && cut < length; cut++ {
		var data string
		var size int64
		var overflow bool
		data, size, overflow, err = d.rpc.tail(ctx, stream, name, 0, length-cut)
		if err == nil || !utf8Split(err) {
			return data, size, overflow, err
		}
	}
	return "", 0, false, err
}

// readAligned is read(offset, n) that retries with up to three bytes less
// when the chunk would end inside a UTF-8 character. It returns the number
// of file bytes read.
func (d *Driver) readAligned(ctx context.Context, stream, name string, offset, n int64) (string, int64, error) {
	var err error
	for cut := int64(0); cut < utf8.UTFMax && cut < n; cut++ {
		var data string
		data, err = d.rpc.read(ctx, stream, name, offset, n-cut)
		if err == nil || !utf8Split(err) {
			return data, n - cut, err
		}
	}
	return "", 0, err
}
