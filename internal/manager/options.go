package manager

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/subbus/subbus/internal/config"
	"github.com/subbus/subbus/internal/resilience"
)

// Defaults for zero Options fields.
const (
	DefaultConnectionTimeout   = 30 * time.Second
	DefaultEchoWindow          = 3 * time.Second
	DefaultOperationTimeout    = 300 * time.Second
	DefaultHealthCheckInterval = 60 * time.Second
	DefaultStopTimeout         = 10 * time.Second
	DefaultLogLines            = 100
	DefaultCacheTTL            = 2 * time.Second
	// MaxLogLines bounds LogOptions.Lines.
	MaxLogLines = 100000
)

// withDefaults returns o with every zero field set to its default.
func (o Options) withDefaults() Options {
	if o.ConnectionTimeout <= 0 {
		o.ConnectionTimeout = DefaultConnectionTimeout
	}
	if o.EchoWindow == 0 {
		o.EchoWindow = DefaultEchoWindow
	}
	if o.OperationTimeout <= 0 {
		o.OperationTimeout = DefaultOperationTimeout
	}
	if o.HealthCheckInterval <= 0 {
		o.HealthCheckInterval = DefaultHealthCheckInterval
	}
	if o.StopTimeout <= 0 {
		o.StopTimeout = DefaultStopTimeout
	}
	if o.LogLines <= 0 {
		o.LogLines = DefaultLogLines
	}
	if o.RetryAttempts <= 0 {
		o.RetryAttempts = resilience.DefaultAttempts
	}
	if o.RetryInitialDelay <= 0 {
		o.RetryInitialDelay = resilience.DefaultInitialDelay
	}
	if o.RetryMultiplier < 1 {
		o.RetryMultiplier = resilience.DefaultMultiplier
	}
	if o.RetryMaxDelay <= 0 {
		o.RetryMaxDelay = resilience.DefaultMaxDelay
	}
	if o.BreakerFailures <= 0 {
		o.BreakerFailures = resilience.DefaultBreakerFailures
	}
	if o.BreakerOpenTimeout <= 0 {
		o.BreakerOpenTimeout = resilience.DefaultBreakerOpenTimeout
	}
	if o.CacheTTL == 0 {
		o.CacheTTL = DefaultCacheTTL
	}
	if o.LockWait < 0 {
		o.LockWait = 0
	}
	return o
}

// OptionsFromConfig reads the manager's settings for driver from cfg (the
// keys config.SectionKeys lists, which every driver section accepts):
// <driver>.retry_attempts (int ≥ 1), retry_delay (duration > 0),
// retry_backoff (number ≥ 1), retry_max_delay, connection_timeout,
// operation_timeout, health_check_interval, breaker_failures (int ≥ 1),
// breaker_open_timeout, stop_timeout (durations > 0) and lock_wait
// (duration ≥ 0), each falling back to the same key under global; and
// global.enable_caching, global.enable_events (bools) and global.cache_ttl
// (duration ≥ 0). Durations are Go syntax ("30s") or a number of seconds.
// A bad value is a *config.Error naming the key. Unset keys keep the
// defaults. Host is left for the caller to set.
func OptionsFromConfig(cfg *config.Config, driver string) (Options, error) {
	var o Options
	if cfg == nil {
		return o.withDefaults(), nil
	}
	r := reader{cfg: cfg, driver: driver}
	r.int("retry_attempts", 1, 100, &o.RetryAttempts)
	r.duration("retry_delay", false, &o.RetryInitialDelay)
	r.float("retry_backoff", 1, 100, &o.RetryMultiplier)
	r.duration("retry_max_delay", false, &o.RetryMaxDelay)
	r.duration("connection_timeout", false, &o.ConnectionTimeout)
	r.duration("operation_timeout", false, &o.OperationTimeout)
	r.duration("health_check_interval", false, &o.HealthCheckInterval)
	r.int("breaker_failures", 1, 1000000, &o.BreakerFailures)
	r.duration("breaker_open_timeout", false, &o.BreakerOpenTimeout)
	r.duration("stop_timeout", false, &o.StopTimeout)
	r.duration("lock_wait", true, &o.LockWait)

	var caching = true
	r.boolAt("global.enable_caching", &caching)
	var events = true
	r.boolAt("global.enable_events", &events)
	var ttl time.Duration
	r.durationAt("global.cache_ttl", true, &ttl)
	if r.err != nil {
		return Options{}, r.err
	}
	switch {
	case !caching:
		o.CacheTTL = -1
	case ttl > 0:
		o.CacheTTL = ttl
	case ttl == 0 && cfg.Has("global.cache_ttl"):
		o.CacheTTL = -1 // a TTL of 0 caches nothing
	}
	o.DisableEvents = !events
	return o.withDefaults(), nil
}

// reader reads typed values, keeping the first error.
type reader struct {
	cfg    *config.Config
	driver string
	err    error
}

// lookup finds key in the driver's section, then in global.
func (r *reader) lookup(key string) (string, any, bool) {
	for _, p := range []string{r.driver + "." + key, "global." + key} {
		if v, ok := r.cfg.Lookup(p); ok && v != nil {
			return p, v, true
		}
	}
	return "", nil, false
}

func (r *reader) fail(key, format string, args ...any) {
	if r.err == nil {
		r.err = &config.Error{Key: key, Msg: fmt.Sprintf(format, args...)}
	}
}

func (r *reader) int(key string, lo, hi int, dst *int) {
	path, v, ok := r.lookup(key)
	if !ok {
		return
	}
	var n int
	switch x := v.(type) {
	case int:
		n = x
	case float64:
		if x != math.Trunc(x) {
			r.fail(path, "%v is not a whole number", x)
			return
		}
		n = int(x)
	case string:
		p, err := strconv.Atoi(strings.TrimSpace(x))
		if err != nil {
			r.fail(path, "%q is not a whole number", x)
			return
		}
		n = p
	default:
		r.fail(path, "%v is not a whole number", v)
		return
	}
	if n < lo || n > hi {
		r.fail(path, "%d is out of range [%d, %d]", n, lo, hi)
		return
	}
	*dst = n
}

func (r *reader) float(key string, lo, hi float64, dst *float64) {
	path, v, ok := r.lookup(key)
	if !ok {
		return
	}
	var f float64
	switch x := v.(type) {
	case int:
		f = float64(x)
	case float64:
		f = x
	case string:
		p, err := strconv.ParseFloat(strings.TrimSpace(x), 64)
		if err != nil {
			r.fail(path, "%q is not a number", x)
			return
		}
		f = p
	default:
		r.fail(path, "%v is not a number", v)
		return
	}
	if math.IsNaN(f) || f < lo || f > hi {
		r.fail(path, "%v is out of range [%v, %v]", f, lo, hi)
		return
	}
	*dst = f
}

func (r *reader) duration(key string, zeroOK bool, dst *time.Duration) {
	if path, v, ok := r.lookup(key); ok {
		r.parseDuration(path, v, zeroOK, dst)
	}
}

func (r *reader) durationAt(path string, zeroOK bool, dst *time.Duration) {
	if v, ok := r.cfg.Lookup(path); ok && v != nil {
		r.parseDuration(path, v, zeroOK, dst)
	}
}

func (r *reader) parseDuration(path string, v any, zeroOK bool, dst *time.Duration) {
	var d time.Duration
	switch x := v.(type) {
	case string:
		p, err := time.ParseDuration(strings.TrimSpace(x))
		if err != nil {
			r.fail(path, "%q is not a duration (use e.g. 30s)", x)
			return
		}
		d = p
	case int:
		d = time.Duration(x) * time.Second
	case float64:
		if math.IsNaN(x) || math.IsInf(x, 0) || math.Abs(x) > 1e9 {
			r.fail(path, "%v is not a duration", x)
			return
		}
		d = time.Duration(x * float64(time.Second))
	default:
		r.fail(path, "%v is not a duration (use e.g. 30s)", v)
		return
	}
	if d < 0 || (d == 0 && !zeroOK) {
		r.fail(path, "%v must be positive", d)
		return
	}
	*dst = d
}

func (r *reader) boolAt(path string, dst *bool) {
	v, ok := r.cfg.Lookup(path)
	if !ok || v == nil {
		return
	}
	b, ok := v.(bool)
	if !ok {
		r.fail(path, "%v is not a boolean (true or false)", v)
		return
	}
	*dst = b
}
