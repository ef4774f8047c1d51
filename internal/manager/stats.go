package manager

import (
	"sort"
	"sync"
	"time"

	"github.com/subbus/subbus/internal/drivers"
)

// BucketBoundsMs are the upper bounds (milliseconds, inclusive) of the
// duration histogram buckets; a last, unbounded bucket follows them.
var BucketBoundsMs = []float64{1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000}

// OpStats are the manager's operation metrics of one driver (counts,
// errors by code, retries, cache hits, durations, breaker state, events
// by type), JSON-serializable for the worker's STATS.
type OpStats struct {
	Driver  string            `json:"driver"`
	Host    string            `json:"host"`
	Since   time.Time         `json:"since"`
	Breaker string            `json:"breaker"`
	Ops     map[string]OpStat `json:"ops"`
	Events  map[string]int64  `json:"events,omitempty"`
}

// OpStat describes one operation ("start", "list", …).
type OpStat struct {
	Count int64 `json:"count"`
	// Errors counts failed calls by error code ("unavailable": 3).
	Errors map[string]int64 `json:"errors,omitempty"`
	// Retries counts extra tries made after retryable errors.
	Retries int64 `json:"retries,omitempty"`
	// CacheHits counts calls answered from the cache (included in Count).
	CacheHits int64 `json:"cache_hits,omitempty"`
	// Durations in milliseconds. P50/P99 are estimated from the
	// histogram: the upper bound of the bucket holding that rank, capped
	// at MaxMs.
	MeanMs float64 `json:"mean_ms"`
	MaxMs  float64 `json:"max_ms"`
	P50Ms  float64 `json:"p50_ms"`
	P99Ms  float64 `json:"p99_ms"`
	// Buckets[i] counts calls that took at most BucketBoundsMs[i] (and
	// more than the previous bound); the last element counts the rest.
	Buckets []int64 `json:"buckets"`
	// BucketBoundsMs repeats the package's bounds so the JSON is self-describing.
	BucketBoundsMs []float64 `json:"bucket_bounds_ms"`
}

type opRecorder struct {
	mu     sync.Mutex
	since  time.Time
	ops    map[string]*opStat
	events map[string]int64
}

type opStat struct {
	count     int64
	errors    map[string]int64
	retries   int64
	cacheHits int64
	sumMs     float64
	maxMs     float64
	buckets   []int64
}

func (r *opRecorder) record(op string, d time.Duration, err error, retries int) {
	ms := float64(d) / float64(time.Millisecond)
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ops == nil {
		r.ops = map[string]*opStat{}
	}
	s := r.ops[op]
	if s == nil {
		s = &opStat{buckets: make([]int64, len(BucketBoundsMs)+1)}
		r.ops[op] = s
	}
	s.count++
	s.retries += int64(retries)
	s.sumMs += ms
	if ms > s.maxMs {
		s.maxMs = ms
	}
	s.buckets[sort.SearchFloat64s(BucketBoundsMs, ms)]++
	if err != nil {
		if s.errors == nil {
			s.errors = map[string]int64{}
		}
		s.errors[drivers.CodeOf(err).String()]++
	}
}

func (r *opRecorder) event(t drivers.EventType) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.events == nil {
		r.events = map[string]int64{}
	}
	r.events[string(t)]++
}

func (r *opRecorder) snapshot() (map[string]OpStat, map[string]int64, time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[string]OpStat, len(r.ops))
	for op, s := range r.ops {
		o := OpStat{
			Count:          s.count,
			Retries:        s.retries,
			CacheHits:      s.cacheHits,
			MaxMs:          s.maxMs,
			Buckets:        append([]int64(nil), s.buckets...),
			BucketBoundsMs: BucketBoundsMs,
		}
		if s.count > 0 {
			o.MeanMs = s.sumMs / float64(s.count)
		}
		if len(s.errors) > 0 {
			o.Errors = make(map[string]int64, len(s.errors))
			for k, v := range s.errors {
				o.Errors[k] = v
			}
		}
		o.P50Ms = quantile(s.buckets, s.count, 0.50, s.maxMs)
		o.P99Ms = quantile(s.buckets, s.count, 0.99, s.maxMs)
		out[op] = o
	}
	ev := make(map[string]int64, len(r.events))
	for k, v := range r.events {
		ev[k] = v
	}
	return out, ev, r.since
}

// quantile estimates the q-quantile from bucket counts: the upper bound of
// the bucket holding rank ceil(q·n), capped at the largest value seen.
func quantile(buckets []int64, n int64, q float64, maxMs float64) float64 {
	if n == 0 {
		return 0
	}
	rank := int64(q*float64(n) + 0.999999)
	if rank < 1 {
		rank = 1
	}
	var seen int64
	for i, c := range buckets {
		seen += c
		if seen >= rank {
			if i < len(BucketBoundsMs) && BucketBoundsMs[i] < maxMs {
				return BucketBoundsMs[i]
			}
			return maxMs
		}
	}
	return maxMs
}

// hit records a read served from the cache.
func (r *opRecorder) hit(op string) {
	r.record(op, 0, nil, 0)
	r.mu.Lock()
	r.ops[op].cacheHits++
	r.mu.Unlock()
}

// echo counts a native event dropped as the echo of a mutation, under the
// events key "native_echo_suppressed".
func (r *opRecorder) echo() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.events == nil {
		r.events = map[string]int64{}
	}
	r.events["native_echo_suppressed"]++
}
