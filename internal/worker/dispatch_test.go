package worker

import (
	"context"
	"reflect"
	"strings"
	"testing"

	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/messages"
)

// Every op of the table has a handler, and the handler accepts the op's
// request type: given another type it answers internal without calling
// the manager (r.m is nil here, so a call would panic).
func TestHandlersCoverEveryOp(t *testing.T) {
	if len(handlers) != len(messages.Ops()) {
		t.Errorf("%d handlers for %d ops", len(handlers), len(messages.Ops()))
	}
	type other struct{}
	for _, op := range messages.Ops() {
		h, ok := handlers[op]
		if !ok {
			t.Errorf("no handler for %s", op)
			continue
		}
		req, _ := messages.NewRequest(op)
		if got := reflect.TypeOf(req); got != h.body {
			t.Errorf("%s: the table's request is %v, the handler serves %v", op, got, h.body)
		}
		_, err := h.serve(context.Background(), &busRequest{op: op}, &other{})
		if drivers.CodeOf(err) != drivers.Internal || !strings.Contains(err.Error(), "no handler for") {
			t.Errorf("%s: handler accepted a foreign body: %v", op, err)
		}
	}
}
