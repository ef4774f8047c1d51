package lxc

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/subbus/subbus/internal/drivers"
)

// TestWaitCancelsCancellable checks the client's side of the operation
// protocol, which LXD 5.0 cannot exercise locally (none of its container
// operations may be cancelled): when the caller's deadline passes during
// a wait, an operation with may_cancel is cancelled with DELETE, and one
// without is left alone. The server here only plays the two endpoints.
func TestWaitCancelsCancellable(t *testing.T) {
	for _, mayCancel := range []bool{true, false} {
		var mu sync.Mutex
		var deletes []string
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			switch {
			case r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/wait"):
				if !strings.Contains(r.URL.RawQuery, "timeout=1") {
					t.Errorf("wait without the deadline-derived timeout: %s", r.URL.RawQuery)
				}
				<-r.Context().Done() // never finishes within the deadline
			case r.Method == http.MethodDelete:
				mu.Lock()
				deletes = append(deletes, r.URL.Path)
				mu.Unlock()
				_, _ = w.Write([]byte(`{"type":"sync","status":"Success","status_code":200,"metadata":{}}`))
			default:
				http.NotFound(w, r)
			}
		}))
		c := &client{http: srv.Client(), base: srv.URL}
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		_, err := c.wait(ctx, &operation{ID: "op1", StatusCode: opRunning, MayCancel: mayCancel})
		cancel()
		srv.Close()
		if classify(err) != drivers.Timeout {
			t.Errorf("may_cancel=%v: wait returned %v, want timeout", mayCancel, err)
		}
		want := 0
		if mayCancel {
			want = 1
		}
		if len(deletes) != want || (want == 1 && deletes[0] != "/1.0/operations/op1") {
			t.Errorf("may_cancel=%v: DELETE requests %v, want %d", mayCancel, deletes, want)
		}
	}
}
