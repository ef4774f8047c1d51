package libvirt

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
	"time"

	"github.com/subbus/subbus/internal/drivers"
)

// tailWindow bounds how much of the end of a console log a tail reads.
const tailWindow = 4 << 20

// removeLocal removes a file this driver's domains wrote, when it is on
// this host; errors are ignored (the file may be on a remote host).
func removeLocal(path string) { _ = os.Remove(path) }

// LogFormat: the serial console is one stream, read in the order it was
// written; virtlogd keeps no times, so lines carry none.
func (d *Driver) LogFormat() drivers.LogFormat { return drivers.LogFormat{Ordered: true} }

// Logs reads the domain's serial console log: the file virtlogd writes for
// the <serial> device's <log> (created domains log to
// <console_log_dir>/<name>.console.log, truncated at each start), or the
// file of a <serial type='file'>. It emits the last opts.Lines complete
// lines, then with Follow polls the file for new ones; a truncated file (a
// new boot) is read again from its start. The file must be readable on
// this host: with a remote URI Logs is Unsupported.
func (d *Driver) Logs(ctx context.Context, name string, opts drivers.LogOptions, emit func(drivers.LogLine) error) error {
	_, x, err := d.get(ctx, name)
	if err != nil {
		return err
	}
	if !d.local() {
		return drivers.Unsupportedf("logs: the console log of domain %s is on the libvirtd host of %s", name, d.opts.URI)
	}
	path := consoleLogOf(x.def)
	if path == "" {
		return drivers.Unsupportedf("logs: domain %s logs its console to no file (no <serial> with a <log file=…>)", name)
	}
	pos, err := tailFile(path, opts.Lines, emit)
	if err != nil {
		return err
	}
	if !opts.Follow {
		return nil
	}
	tick := time.NewTicker(time.Duration(d.opts.LogPollInterval))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		if pos, err = followFile(path, pos, emit); err != nil {
			return err
		}
	}
}

// tailFile emits the last n complete lines of path and returns the offset
// just after them. A missing file (never started) has no lines.
func tailFile(path string, n int, emit func(drivers.LogLine) error) (int64, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("console log %s: %w", path, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return 0, fmt.Errorf("console log %s: %w", path, err)
	}
	start := max(st.Size()-tailWindow, 0)
	b := make([]byte, st.Size()-start)
	if _, err := f.ReadAt(b, start); err != nil && !errors.Is(err, io.EOF) {
		return 0, fmt.Errorf("console log %s: %w", path, err)
	}
	lines, used := completeLines(b)
	if start > 0 && len(lines) > 0 {
		lines = lines[1:] // the first one may be cut
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	for _, l := range lines {
		if err := emit(drivers.LogLine{Stream: "console", Line: l}); err != nil {
			return 0, err
		}
	}
	return start + int64(used), nil
}

// followFile emits the complete lines written to path after pos and
// returns the new offset.
func followFile(path string, pos int64, emit func(drivers.LogLine) error) (int64, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return pos, fmt.Errorf("console log %s: %w", path, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return pos, fmt.Errorf("console log %s: %w", path, err)
	}
	if st.Size() < pos {
		pos = 0 // truncated: the domain started again
	}
	if st.Size() == pos {
		return pos, nil
	}
	b := make([]byte, min(st.Size()-pos, tailWindow))
	k, err := f.ReadAt(b, pos)
	if err != nil && !errors.Is(err, io.EOF) {
		return pos, fmt.Errorf("console log %s: %w", path, err)
	}
	lines, used := completeLines(b[:k])
	for _, l := range lines {
		if err := emit(drivers.LogLine{Stream: "console", Line: l}); err != nil {
			return pos, err
		}
	}
	return pos + int64(used), nil
}

// completeLines splits b into its complete lines, without line ends and
// carriage returns (a serial console ends lines with "\r\n"), and returns
// how many bytes they span.
func completeLines(b []byte) ([]string, int) {
	end := bytes.LastIndexByte(b, '\n') + 1
	if end == 0 {
		return nil, 0
	}
	parts := strings.Split(string(b[:end-1]), "\n")
	for i, p := range parts {
		parts[i] = strings.ReplaceAll(p, "\r", "")
	}
	return parts, end
}
