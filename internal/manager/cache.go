package manager

import (
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/subbus/subbus/internal/drivers"
)

// cache keeps the results of List and Get for a short TTL. Every mutation
// of an instance and every native event invalidates that instance's entry
// and the list. A generation counter keeps a read that started before an
// invalidation from storing its (possibly stale) result afterwards.
type cache struct {
	ttl time.Duration // <= 0: disabled
	now func() time.Time

	mu    sync.Mutex
	gen   uint64
	list  *cachedList
	items map[string]cachedItem
}

type cachedList struct {
	at   time.Time
	list []drivers.Instance
}

type cachedItem struct {
	at   time.Time
	inst drivers.Instance
}

func (c *cache) enabled() bool { return c.ttl > 0 }

// generation returns the current generation, to pass to put*.
func (c *cache) generation() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.gen
}

func (c *cache) fresh(at time.Time) bool { return c.now().Sub(at) < c.ttl }

func (c *cache) getList() ([]drivers.Instance, bool) {
	if !c.enabled() {
		return nil, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.list == nil || !c.fresh(c.list.at) {
		return nil, false
	}
	return cloneInstances(c.list.list), true
}

func (c *cache) putList(gen uint64, l []drivers.Instance) {
	if !c.enabled() {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if gen != c.gen {
		return
	}
	c.list = &cachedList{at: c.now(), list: cloneInstances(l)}
}

func (c *cache) get(name string) (drivers.Instance, bool) {
	if !c.enabled() {
		return drivers.Instance{}, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if it, ok := c.items[name]; ok && c.fresh(it.at) {
		return cloneInstance(it.inst), true
	}
	return drivers.Instance{}, false
}

func (c *cache) put(gen uint64, i drivers.Instance) {
	if !c.enabled() {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if gen != c.gen {
		return
	}
	if c.items == nil {
		c.items = map[string]cachedItem{}
	}
	c.items[i.Name] = cachedItem{at: c.now(), inst: cloneInstance(i)}
}

// invalidate drops the list and the entries of names (all entries when
// names is empty).
func (c *cache) invalidate(names ...string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	c.list = nil
	if len(names) == 0 {
		c.items = nil
		return
	}
	for _, n := range names {
		delete(c.items, n)
	}
}

func cloneInstance(i drivers.Instance) drivers.Instance {
	i.Metadata = maps.Clone(i.Metadata)
	i.Networks = slices.Clone(i.Networks)
	for k := range i.Networks {
		i.Networks[k].DNSServers = slices.Clone(i.Networks[k].DNSServers)
	}
	return i
}

func cloneInstances(l []drivers.Instance) []drivers.Instance {
	out := make([]drivers.Instance, len(l))
	for k, i := range l {
		out[k] = cloneInstance(i)
	}
	return out
}
