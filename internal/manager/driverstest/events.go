package driverstest

import (
	"sync"

	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/messages"
)

// Events gathers the events a manager publishes; pass its Add to
// manager.Subscribe.
type Events struct {
	mu  sync.Mutex
	evs []messages.Event
}

// Add records ev.
func (c *Events) Add(ev messages.Event) { c.mu.Lock(); c.evs = append(c.evs, ev); c.mu.Unlock() }

// Failed returns the failed events about instance, oldest first.
func (c *Events) Failed(instance string) []messages.Event {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []messages.Event
	for _, e := range c.evs {
		if e.Type == drivers.EventFailed && e.Instance == instance {
			out = append(out, e)
		}
	}
	return out
}
