package lxc

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"

	"github.com/coder/websocket"

	"github.com/subbus/subbus/internal/drivers"
)

// execStreams runs a command that needs stdin: with wait-for-websocket the
// operation's metadata.fds holds one secret per stream ("0", "1", "2",
// "control"); the server starts the command once all four websockets are
// connected. Stdin is sent as binary frames and ended with an empty text
// frame (LXD's end-of-stream barrier); stdout and stderr arrive as binary
// frames until the same barrier or a close. The exit code is the
// operation's metadata.return.
func (d *Driver) execStreams(ctx context.Context, c *client, name string, body execBody, stdin []byte, stdout, stderr drivers.Writer) (int, error) {
	body.RecordOutput, body.WaitForWebsocket, body.Interactive = false, true, false
	op, err := c.start(ctx, http.MethodPost, "/1.0/instances/"+esc(name)+"/exec", body, nil)
	if err != nil {
		return -1, err
	}
	fds, _ := op.Metadata["fds"].(map[string]any)
	conns := map[string]*websocket.Conn{}
	defer func() {
		for _, ws := range conns {
			ws.CloseNow()
		}
	}()
	for _, fd := range []string{"control", "0", "1", "2"} {
		secret, _ := fds[fd].(string)
		if secret == "" {
			return -1, fmt.Errorf("lxd: exec: the operation has no websocket for fd %s", fd)
		}
		u := strings.Replace(c.url("/1.0/operations/"+esc(op.ID)+"/websocket?secret="+url.QueryEscape(secret)), "http", "ws", 1)
		ws, _, err := websocket.Dial(ctx, u, &websocket.DialOptions{HTTPClient: c.http})
		if err != nil {
			if ctx.Err() != nil {
				return -1, ctx.Err()
			}
			return -1, &connError{Err: fmt.Errorf("exec websocket %s: %w", fd, err)}
		}
		ws.SetReadLimit(16 << 20)
		conns[fd] = ws
	}

	var wg sync.WaitGroup
	errs := make([]error, 3)
	copyOut := func(i int, ws *websocket.Conn, w drivers.Writer) {
		defer wg.Done()
		for {
			typ, data, err := ws.Read(ctx)
			if err != nil {
				if ctx.Err() != nil {
					errs[i] = ctx.Err()
				}
				return // a close or hang-up after the last frame ends the stream
			}
			if typ == websocket.MessageText {
				return // end of stream
			}
			if _, err := w.Write(data); err != nil {
				errs[i] = err
				return
			}
		}
	}
	wg.Add(2)
	go copyOut(1, conns["1"], stdout)
	go copyOut(2, conns["2"], stderr)
	in := conns["0"]
	if err := in.Write(ctx, websocket.MessageBinary, stdin); err != nil {
		errs[0] = err
	} else if err := in.Write(ctx, websocket.MessageText, nil); err != nil {
		errs[0] = err
	}
	wg.Wait()
	op, err = c.wait(ctx, op)
	if err != nil {
		return -1, err
	}
	for _, e := range errs {
		if e != nil {
			return -1, e
		}
	}
	code := -1
	if v, ok := op.Metadata["return"].(float64); ok {
		code = int(v)
	}
	return code, nil
}
