package manager

import (
	"context"
	"sort"
	"sync"
	"time"

	"github.com/subbus/subbus/internal/drivers"
)

// keyedLock serializes mutations per instance name. A name's entry exists
// only while someone holds or waits for it.
type keyedLock struct {
	mu      sync.Mutex
	entries map[string]*lockEntry
}

type lockEntry struct {
	ch   chan struct{} // holds one token while locked
	op   string        // the holder's operation, for the busy error
	refs int           // holders + waiters
}

// acquire locks every name (in sorted order, so two multi-name lockers
// cannot deadlock), waiting up to wait for each. A name still held by
// another mutation after wait is Conflict naming its operation; ctx
// ending while waiting is Timeout. The returned func unlocks them all.
func (k *keyedLock) acquire(ctx context.Context, wait time.Duration, op string, names ...string) (func(), error) {
	names = append([]string(nil), names...)
	sort.Strings(names)
	var held []string
	release := func() {
		for i := len(held) - 1; i >= 0; i-- {
			k.unlock(held[i])
		}
	}
	for i, n := range names {
		if i > 0 && names[i-1] == n {
			continue
		}
		if err := k.lock(ctx, wait, op, n); err != nil {
			release()
			return nil, err
		}
		held = append(held, n)
	}
	return release, nil
}

func (k *keyedLock) lock(ctx context.Context, wait time.Duration, op, name string) error {
	k.mu.Lock()
	if k.entries == nil {
		k.entries = map[string]*lockEntry{}
	}
	e := k.entries[name]
	if e == nil {
		e = &lockEntry{ch: make(chan struct{}, 1)}
		k.entries[name] = e
	}
	e.refs++
	k.mu.Unlock()

	acquired := false
	select {
	case e.ch <- struct{}{}:
		acquired = true
	default:
	}
	var waitErr error
	if !acquired && wait > 0 {
		t := time.NewTimer(wait)
		select {
		case e.ch <- struct{}{}:
			acquired = true
		case <-t.C:
		case <-ctx.Done():
			waitErr = drivers.Wrap(drivers.Timeout, ctx.Err(), "waiting for instance "+name)
		}
		t.Stop()
	}

	k.mu.Lock()
	defer k.mu.Unlock()
	if acquired {
		e.op = op
		return nil
	}
	holder := e.op
	e.refs--
	if e.refs == 0 {
		delete(k.entries, name)
	}
	if waitErr != nil {
		return waitErr
	}
	if holder == "" {
		holder = "another operation"
	}
	return drivers.Errorf(drivers.Conflict, "instance %s is busy: %s in progress", name, holder)
}

func (k *keyedLock) unlock(name string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	e := k.entries[name]
	if e == nil {
		return
	}
	e.op = ""
	<-e.ch
	e.refs--
	if e.refs == 0 {
		delete(k.entries, name)
	}
}

// busy reports the operation holding name, if any.
func (k *keyedLock) busy(name string) (string, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	e := k.entries[name]
	if e == nil || len(e.ch) == 0 {
		return "", false
	}
	return e.op, true
}
