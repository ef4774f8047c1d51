package worker

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
)

// outItem is one message waiting to be stored in a stream. msgID is its
// Nats-Msg-Id, so a publish retried after a lost acknowledgement (or
// replayed after a restart) is stored once, within the stream's duplicate
// window.
type outItem struct {
	seq     uint64
	subject string
	msgID   string
	data    []byte
	size    int64 // bytes of its record in the disk log
}

// outbox is a bounded FIFO of messages not yet acknowledged by JetStream.
// Items stay in it until their publish is acknowledged; when full, the
// oldest item is dropped and counted. Safe for concurrent use; push never
// blocks on the network (it runs on the manager's emitting goroutine).
//
// A durable outbox (openOutbox) also appends every item to a log file and
// fsyncs it before push returns (concurrent pushes share one fsync), so an
// item survives a kill -9 of the worker: openOutbox replays the items of
// the file that were not acknowledged. The file is emptied whenever every
// item is acknowledged and rewritten with the live items when it grows past
// compactFactor times their size, so it stays bounded by about
// compactFactor x max items.
type outbox struct {
	mu      sync.Mutex
	items   []outItem
	next    uint64
	max     int
	dropped atomic.Uint64
	stored  atomic.Uint64
	notify  chan struct{}

	// Disk log (nil file: memory only). Guarded by mu except syncMu.
	path      string
	file      *os.File
	lock      *os.File
	fileSize  int64
	liveSize  int64
	appended  uint64 // bytes ever appended, the position fsyncs reach
	synced    uint64
	syncMu    sync.Mutex // one fsync at a time; waiters share the next one
	replayed  int
	diskErrs  atomic.Uint64
	lastError atomic.Value // string
}

// compactFactor: the log file is rewritten when it is this many times
// larger than the live items (and at least compactMin).
const (
	compactFactor = 4
	compactMin    = 1 << 20
)

func newOutbox(max int) *outbox {
	return &outbox{max: max, notify: make(chan struct{}, 1)}
}

// openOutbox opens (creating) the durable outbox <dir>/<name>.log, locks
// it against a second worker, and loads the items it holds (a torn last
// record, from a crash during a write, is cut off).
func openOutbox(dir, name string, max int) (*outbox, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	o := newOutbox(max)
	o.path = filepath.Join(dir, name+".log")
	lock, err := os.OpenFile(o.path+".lock", os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		lock.Close()
		return nil, fmt.Errorf("outbox %s is in use by another worker: %w", o.path, err)
	}
	o.lock = lock
	f, err := os.OpenFile(o.path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		lock.Close()
		return nil, err
	}
	good, err := o.load(f)
	if err != nil {
		f.Close()
		lock.Close()
		return nil, err
	}
	if err := f.Truncate(good); err != nil {
		f.Close()
		lock.Close()
		return nil, err
	}
	if _, err := f.Seek(good, io.SeekStart); err != nil {
		f.Close()
		lock.Close()
		return nil, err
	}
	o.file, o.fileSize = f, good
	o.replayed = len(o.items)
	return o, nil
}

// record is the payload of one log record.
type record struct {
	Subject string          `json:"s"`
	MsgID   string          `json:"id"`
	Data    json.RawMessage `json:"d"`
}

// encodeRecord frames an item: length (4 bytes), CRC-32C of the payload
// (4 bytes), payload (JSON).
func encodeRecord(subject, msgID string, data []byte) ([]byte, error) {
	if !json.Valid(data) {
		return nil, errors.New("outbox: item is not JSON")
	}
	p, err := json.Marshal(record{Subject: subject, MsgID: msgID, Data: data})
	if err != nil {
		return nil, err
	}
	b := make([]byte, 8, 8+len(p))
	binary.LittleEndian.PutUint32(b[0:4], uint32(len(p)))
	binary.LittleEndian.PutUint32(b[4:8], crc32.Checksum(p, crcTable))
	return append(b, p...), nil
}

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// load reads the records of f into the outbox and returns the length of
// its valid prefix.
func (o *outbox) load(f *os.File) (int64, error) {
	r := bufio.NewReader(f)
	var good int64
	hdr := make([]byte, 8)
	for {
		if _, err := io.ReadFull(r, hdr); err != nil {
			return good, nil // end, or a torn header
		}
		n := binary.LittleEndian.Uint32(hdr[0:4])
		if n > 64<<20 {
			return good, nil
		}
		p := make([]byte, n)
		if _, err := io.ReadFull(r, p); err != nil || crc32.Checksum(p, crcTable) != binary.LittleEndian.Uint32(hdr[4:8]) {
			return good, nil
		}
		var rec record
		if err := json.Unmarshal(p, &rec); err != nil {
			return good, nil
		}
		size := int64(8 + n)
		good += size
		o.appendItem(rec.Subject, rec.MsgID, rec.Data, size)
	}
}

// appendItem adds an item in memory, dropping the oldest when full; mu is
// held (or the outbox is not shared yet).
func (o *outbox) appendItem(subject, msgID string, data []byte, size int64) {
	if len(o.items) >= o.max {
		o.liveSize -= o.items[0].size
		o.items = o.items[1:]
		o.dropped.Add(1)
	}
	o.next++
	o.items = append(o.items, outItem{seq: o.next, subject: subject, msgID: msgID, data: data, size: size})
	o.liveSize += size
}

// push appends an item, dropping the oldest one when full. A durable
// outbox has the item on disk (fsync'd) when push returns; if the disk
// write fails, the item is kept in memory only and the failure counted.
func (o *outbox) push(subject, msgID string, data []byte) {
	if target, ok := o.pushNoSync(subject, msgID, data); ok {
		o.syncTo(target)
	}
	o.wake()
}

// pushNoSync appends an item (writing it to the log without fsync); it
// returns the position to sync to and whether there is a log.
func (o *outbox) pushNoSync(subject, msgID string, data []byte) (uint64, bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	var size int64
	if o.file != nil {
		b, err := encodeRecord(subject, msgID, data)
		if err == nil {
			_, err = o.file.Write(b)
		}
		if err != nil {
			o.diskErrs.Add(1)
			o.lastError.Store(err.Error())
		} else {
			size = int64(len(b))
			o.fileSize += size
			o.appended += uint64(size)
		}
	}
	o.appendItem(subject, msgID, data, size)
	if o.file != nil && o.fileSize > compactMin && o.fileSize > compactFactor*o.liveSize {
		o.compact() // dropped items pile up while NATS is unreachable
	}
	return o.appended, o.file != nil
}

// syncTo returns once the log is fsync'd at least up to target. Pushes
// waiting at the same time share one fsync (group commit).
func (o *outbox) syncTo(target uint64) {
	o.syncMu.Lock()
	defer o.syncMu.Unlock()
	o.mu.Lock()
	if o.synced >= target || o.file == nil {
		o.mu.Unlock()
		return
	}
	f, upto := o.file, o.appended
	o.mu.Unlock()
	err := f.Sync()
	o.mu.Lock()
	defer o.mu.Unlock()
	if err != nil && f == o.file {
		o.diskErrs.Add(1)
		o.lastError.Store(err.Error())
		return
	}
	// (A file replaced meanwhile was compacted: its successor is synced.)
	o.synced = max(o.synced, upto)
}

// sync fsyncs everything pushed so far.
// idle reports whether no pushed event waits for its fsync (sync would
// return at once).
func (o *outbox) idle() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.file == nil || o.synced >= o.appended
}

func (o *outbox) sync() {
	o.mu.Lock()
	target, done := o.appended, o.file == nil || o.synced >= o.appended
	o.mu.Unlock()
	if !done { // else every reply would take syncMu, one after the other
		o.syncTo(target)
	}
}

// peek returns up to n of the oldest items without removing them.
func (o *outbox) peek(n int) []outItem {
	o.mu.Lock()
	defer o.mu.Unlock()
	if n > len(o.items) {
		n = len(o.items)
	}
	return append([]outItem(nil), o.items[:n]...)
}

// remove deletes the items with the given sequence numbers (acknowledged).
// The log is emptied once nothing is left, compacted when mostly dead.
func (o *outbox) remove(done map[uint64]bool) {
	if len(done) == 0 {
		return
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	kept := o.items[:0]
	for _, it := range o.items {
		if !done[it.seq] {
			kept = append(kept, it)
		} else {
			o.liveSize -= it.size
		}
	}
	clear(o.items[len(kept):])
	o.items = kept
	o.stored.Add(uint64(len(done)))
	if o.file == nil {
		return
	}
	switch {
	case len(o.items) == 0 && o.fileSize > 0:
		// Everything is acknowledged: no fsync needed (replaying acknowledged
		// items is harmless, JetStream drops them as duplicates).
		if err := o.file.Truncate(0); err == nil {
			_, _ = o.file.Seek(0, io.SeekStart)
			o.fileSize, o.liveSize = 0, 0
		}
	case o.fileSize > compactMin && o.fileSize > compactFactor*o.liveSize:
		o.compact()
	}
}

// compact rewrites the log with the live items only (temporary file,
// fsync, rename, fsync of the directory); mu is held.
func (o *outbox) compact() {
	tmp := o.path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return
	}
	w := bufio.NewWriter(f)
	var size int64
	for i, it := range o.items {
		b, err := encodeRecord(it.subject, it.msgID, it.data)
		if err != nil {
			continue
		}
		_, _ = w.Write(b)
		o.items[i].size = int64(len(b))
		size += int64(len(b))
	}
	if w.Flush() != nil || f.Sync() != nil || os.Rename(tmp, o.path) != nil {
		f.Close()
		_ = os.Remove(tmp)
		return
	}
	if d, err := os.Open(filepath.Dir(o.path)); err == nil {
		_ = d.Sync()
		d.Close()
	}
	_ = o.file.Close()
	o.file, o.fileSize, o.liveSize = f, size, size
	o.synced = o.appended
}

// close closes the log (the items stay in it for the next openOutbox).
func (o *outbox) close() {
	o.sync()
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.file != nil {
		_ = o.file.Close()
		o.file = nil
	}
	if o.lock != nil {
		_ = o.lock.Close()
		o.lock = nil
	}
}

func (o *outbox) len() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.items)
}

func (o *outbox) wake() {
	select {
	case o.notify <- struct{}{}:
	default:
	}
}

// diskBytes is the size of the log file (0 for a memory-only outbox).
func (o *outbox) diskBytes() int64 {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.fileSize
}
