package lxc

import (
	"context"
	"errors"
	"io"
	"net"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/subbus/subbus/internal/drivers"
)

// TestNoSilentConnections: the driver never leaves a connection to LXD's
// socket open without sending on it. LXD 5.0 reads the first bytes of a
// new connection in its accept loop, so one silent connection stalls the
// whole daemon until it closes (docs/lxc.md, "Tests"). A counting relay
// stands in front of the socket while the driver serves concurrent
// requests, some cancelled while their connection is still being made.
func TestNoSilentConnections(t *testing.T) {
	requireLXD(t)
	real, err := findSocket()
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "relay.socket")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	var silent, total atomic.Int32
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		_ = ln.Close()
		mu.Lock()
		for _, c := range conns {
			_ = c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			total.Add(1)
			mu.Lock()
			conns = append(conns, conn)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer conn.Close()
				// The first bytes must come within a second, as LXD needs them.
				_ = conn.SetReadDeadline(time.Now().Add(time.Second))
				first := make([]byte, 1)
				if _, err := conn.Read(first); err != nil {
					var ne net.Error
					if errors.As(err, &ne) && ne.Timeout() {
						silent.Add(1)
					}
					return
				}
				_ = conn.SetReadDeadline(time.Time{})
				up, err := net.Dial("unix", real)
				if err != nil {
					return
				}
				mu.Lock()
				conns = append(conns, up)
				mu.Unlock()
				defer up.Close()
				if _, err := up.Write(first); err != nil {
					return
				}
				go func() { _, _ = io.Copy(up, conn) }()
				_, _ = io.Copy(conn, up)
			}()
		}
	}()

	o := DefaultOptions()
	o.Socket = sock
	d := New(o)
	ctx, cancel := context.WithTimeout(context.Background(), probeTimeout)
	defer cancel()
	if err := d.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	var calls sync.WaitGroup
	for i := range 40 {
		calls.Add(1)
		go func() {
			defer calls.Done()
			c := ctx
			if i%2 == 1 { // given up on almost at once, often mid-dial
				var cancel context.CancelFunc
				c, cancel = context.WithTimeout(ctx, time.Duration(i%5)*100*time.Microsecond)
				defer cancel()
			}
			if _, err := d.List(c); err != nil && c == ctx {
				t.Errorf("List: %v", err)
			}
			if _, err := d.Get(c, randName("sbt-none")); c == ctx && classify(err) != drivers.NotFound {
				t.Errorf("Get of a missing instance: %v", err)
			}
		}()
	}
	calls.Wait()
	time.Sleep(1500 * time.Millisecond) // let a silent connection show itself
	if n := silent.Load(); n > 0 {
		t.Errorf("%d of %d connections to LXD's socket sent nothing for a second", n, total.Load())
	}
	t.Logf("%d connections, none silent", total.Load())
}
