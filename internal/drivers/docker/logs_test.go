package docker

import (
	"bytes"
	"encoding/binary"
	"testing"
	"time"

	"github.com/subbus/subbus/internal/drivers"
)

// frame builds one frame of the multiplexed log stream.
func frame(stream byte, payload string) []byte {
	h := make([]byte, 8)
	h[0] = stream
	binary.BigEndian.PutUint32(h[4:], uint32(len(payload)))
	return append(h, payload...)
}

// The frames are read in the daemon's order across stdout and stderr, a
// line split into partial messages is joined under the time of its first
// part, and a daemon error in the stream is returned.
func TestReadFrames(t *testing.T) {
	var in bytes.Buffer
	in.Write(frame(1, "2026-11-30T07:00:00.000000001Z out 1\n"))
	in.Write(frame(2, "2026-11-30T07:00:00.000000002Z err 2\n"))
	in.Write(frame(1, "2026-11-30T07:00:00.000000003Z long "))
	in.Write(frame(2, "2026-11-30T07:00:00.000000004Z err 4\n"))
	in.Write(frame(1, "2026-11-30T07:00:00.000000005Z line 3\n"))
	in.Write(frame(1, "2026-11-30T07:00:00.000000006Z unfinished"))
	var got []drivers.LogLine
	err := readFrames(&in, func(l drivers.LogLine) bool { got = append(got, l); return true })
	if err == nil || err.Error() != "EOF" {
		t.Fatalf("readFrames: %v, want EOF", err)
	}
	want := []struct {
		stream, line string
		ns           int
	}{{"stdout", "out 1", 1}, {"stderr", "err 2", 2}, {"stderr", "err 4", 4}, {"stdout", "long line 3", 3}, {"stdout", "unfinished", 6}}
	if len(got) != len(want) {
		t.Fatalf("got %d lines: %+v", len(got), got)
	}
	for i, w := range want {
		g := got[i]
		if g.Stream != w.stream || g.Line != w.line || !g.Time.Equal(time.Date(2026, 11, 30, 7, 0, 0, w.ns, time.UTC)) {
			t.Errorf("line %d = %+v, want %+v", i, g, w)
		}
	}
	bad := bytes.NewBuffer(frame(3, "no such container\n"))
	if err := readFrames(bad, func(drivers.LogLine) bool { return true }); err == nil {
		t.Error("a daemon error frame was not returned")
	}
}
