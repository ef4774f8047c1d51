package worker

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/internal/manager"
	"github.com/subbus/subbus/messages"
)

// TestCachedGetAnswersLikeTheNormalPath: a get the manager's cache holds is
// answered on micro's goroutine (serveCached) with what the normal path
// answers — same result, request id echoed in body and header, counted in
// the stats — and everything it must not take (a passed deadline, another
// body form, a missing or invalid name, an instance not cached) gets the
// normal path's answer.
func TestCachedGetAnswersLikeTheNormalPath(t *testing.T) {
	s := startNATS(t)
	d := newToy()
	m := manager.New(d, manager.Options{Host: "h1", CacheTTL: time.Minute, RetryAttempts: 1})
	w := startWorker(t, s, []*manager.Manager{m}, func(o *Options) { o.MaxConcurrent = 1 })
	nc := connect(t, s.ClientURL())
	ok(t, nc, subj("toy", messages.OpCreate), messages.CreateRequest{Template: messages.Template{Name: "a1", BaseImage: "img"}}, nil)
	getSubj := hostSubj("toy", "h1", messages.OpGet)
	// The normal path answers first (and fills the cache).
	normal, _ := request(t, nc, getSubj, `{ "name": "a1" }`, map[string]string{messages.HeaderRequestID: "r-normal"})
	if _, cached := m.Cached("a1"); !cached {
		t.Fatal("the instance is not in the manager's cache after a get")
	}
	before := w.replies.Load()
	hits := m.Stats().Ops["get"].CacheHits
	fast, msg := request(t, nc, getSubj, `{"name":"a1"}`, map[string]string{messages.HeaderRequestID: "r-fast",
		messages.HeaderDeadline: messages.FormatDeadline(time.Now().Add(time.Minute))})
	if fast.Error != nil || fast.RequestID != "r-fast" || fast.Host != "h1" || len(msg.Header) != 0 {
		t.Fatalf("cached get: reply %+v, header %v", fast, msg.Header)
	}
	var a, b messages.Instance
	if json.Unmarshal(normal.Result, &a) != nil || json.Unmarshal(fast.Result, &b) != nil || string(normal.Result) != string(fast.Result) {
		t.Fatalf("cached get answered %s, the normal path %s", fast.Result, normal.Result)
	}
	if w.replies.Load() != before+1 || m.Stats().Ops["get"].CacheHits != hits+1 {
		t.Fatalf("cached get not counted: replies %d -> %d, cache hits %d -> %d", before, w.replies.Load(), hits, m.Stats().Ops["get"].CacheHits)
	}
	// It is answered on micro's goroutine: at once, even while the only
	// unary slot is taken by a slow create (the normal path would wait).
	slow := make(chan error, 1)
	go func() {
		_, err := callErr(nc, subj("toy", messages.OpCreate), messages.CreateRequest{Template: messages.Template{Name: "slow",
			BaseImage: "img", Metadata: map[string]string{"delay": "3s"}}}, nil, 20*time.Second)
		slow <- err
	}()
	select {
	case <-d.slow:
	case <-time.After(10 * time.Second):
		t.Fatal("the slow create did not start")
	}
	t0 := time.Now()
	if _, err := callErr(nc, getSubj, `{"name":"a1"}`, nil, 2*time.Second); err != nil || time.Since(t0) > 2*time.Second {
		t.Fatalf("cached get while the slot is taken: %v after %v", err, time.Since(t0))
	}
	if err := <-slow; err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		body string
		hdr  map[string]string
		code drivers.Code
	}{
		{`{"name":"a1"}`, map[string]string{messages.HeaderDeadline: messages.FormatDeadline(time.Now().Add(-time.Second))}, drivers.Timeout},
		{`{"name":"a1"}`, map[string]string{messages.HeaderDeadline: "yesterday"}, drivers.InvalidArgument},
		{`{"name":"nope"}`, nil, drivers.NotFound},
		{`{"name":"a b"}`, nil, drivers.InvalidArgument},
		{`{"name":"a1","x":1}`, nil, drivers.InvalidArgument},
		{`{"name":""}`, nil, drivers.InvalidArgument},
	} {
		wantErr(t, nc, getSubj, tc.body, tc.hdr, tc.code)
	}
}
