package manager

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/subbus/subbus/internal/config"
)

func TestOptionsFromConfig(t *testing.T) {
	tests := []struct {
		name    string
		yaml    string
		check   func(t *testing.T, o Options)
		wantKey string // non-empty: a *config.Error naming this key
	}{
		{name: "empty config gives defaults", yaml: ``, check: func(t *testing.T, o Options) {
			if o.RetryAttempts != 3 || o.RetryInitialDelay != 200*time.Millisecond || o.RetryMultiplier != 2 ||
				o.ConnectionTimeout != 30*time.Second || o.OperationTimeout != 300*time.Second ||
				o.HealthCheckInterval != 60*time.Second || o.BreakerFailures != 5 || o.BreakerOpenTimeout != 30*time.Second ||
				o.CacheTTL != 2*time.Second || o.DisableEvents {
				t.Fatalf("%+v", o)
			}
		}},
		{name: "driver section", yaml: `
docker:
  retry_attempts: 5
  retry_delay: 1.5
  retry_backoff: 3
  retry_max_delay: 20s
  connection_timeout: 10s
  operation_timeout: 2m
  health_check_interval: 15
  breaker_failures: 2
  breaker_open_timeout: 45s
  stop_timeout: 3s
  lock_wait: 0
`, check: func(t *testing.T, o Options) {
			if o.RetryAttempts != 5 || o.RetryInitialDelay != 1500*time.Millisecond || o.RetryMultiplier != 3 ||
				o.RetryMaxDelay != 20*time.Second || o.ConnectionTimeout != 10*time.Second || o.OperationTimeout != 2*time.Minute ||
				o.HealthCheckInterval != 15*time.Second || o.BreakerFailures != 2 || o.BreakerOpenTimeout != 45*time.Second ||
				o.StopTimeout != 3*time.Second || o.LockWait != 0 {
				t.Fatalf("%+v", o)
			}
		}},
		{name: "global fallback, driver wins", yaml: `
global:
  retry_attempts: 7
  connection_timeout: 5s
docker:
  retry_attempts: 2
`, check: func(t *testing.T, o Options) {
			if o.RetryAttempts != 2 || o.ConnectionTimeout != 5*time.Second {
				t.Fatalf("%+v", o)
			}
		}},
		{name: "other driver's section ignored", yaml: `
lxc:
  retry_attempts: 9
`, check: func(t *testing.T, o Options) {
			if o.RetryAttempts != 3 {
				t.Fatalf("%+v", o)
			}
		}},
		{name: "caching off", yaml: "global:\n  enable_caching: false\n  cache_ttl: 5s\n", check: func(t *testing.T, o Options) {
			if o.CacheTTL >= 0 {
				t.Fatalf("CacheTTL %v, want disabled", o.CacheTTL)
			}
		}},
		{name: "cache ttl", yaml: "global:\n  cache_ttl: 500ms\n", check: func(t *testing.T, o Options) {
			if o.CacheTTL != 500*time.Millisecond {
				t.Fatalf("CacheTTL %v", o.CacheTTL)
			}
		}},
		{name: "cache ttl 0 disables", yaml: "global:\n  cache_ttl: 0\n", check: func(t *testing.T, o Options) {
			if o.CacheTTL >= 0 {
				t.Fatalf("CacheTTL %v", o.CacheTTL)
			}
		}},
		{name: "events off", yaml: "global:\n  enable_events: false\n", check: func(t *testing.T, o Options) {
			if !o.DisableEvents {
				t.Fatal("events still on")
			}
		}},
		{name: "attempts zero", yaml: "docker:\n  retry_attempts: 0\n", wantKey: "docker.retry_attempts"},
		{name: "attempts fraction", yaml: "docker:\n  retry_attempts: 2.5\n", wantKey: "docker.retry_attempts"},
		{name: "attempts text", yaml: "docker:\n  retry_attempts: many\n", wantKey: "docker.retry_attempts"},
		{name: "global attempts bad", yaml: "global:\n  retry_attempts: -1\n", wantKey: "global.retry_attempts"},
		{name: "delay text", yaml: "docker:\n  retry_delay: soon\n", wantKey: "docker.retry_delay"},
		{name: "delay negative", yaml: "docker:\n  retry_delay: -1s\n", wantKey: "docker.retry_delay"},
		{name: "delay zero", yaml: "docker:\n  retry_delay: 0\n", wantKey: "docker.retry_delay"},
		{name: "backoff below 1", yaml: "docker:\n  retry_backoff: 0.5\n", wantKey: "docker.retry_backoff"},
		{name: "backoff text", yaml: "docker:\n  retry_backoff: double\n", wantKey: "docker.retry_backoff"},
		{name: "connection timeout list", yaml: "docker:\n  connection_timeout: [1]\n", wantKey: "docker.connection_timeout"},
		{name: "operation timeout zero", yaml: "docker:\n  operation_timeout: 0s\n", wantKey: "docker.operation_timeout"},
		{name: "health interval bad", yaml: "docker:\n  health_check_interval: 1x\n", wantKey: "docker.health_check_interval"},
		{name: "breaker failures zero", yaml: "docker:\n  breaker_failures: 0\n", wantKey: "docker.breaker_failures"},
		{name: "breaker timeout bad", yaml: "docker:\n  breaker_open_timeout: never\n", wantKey: "docker.breaker_open_timeout"},
		{name: "lock wait negative", yaml: "docker:\n  lock_wait: -2s\n", wantKey: "docker.lock_wait"},
		{name: "caching not bool", yaml: "global:\n  enable_caching: maybe\n", wantKey: "global.enable_caching"},
		{name: "events not bool", yaml: "global:\n  enable_events: 1\n", wantKey: "global.enable_events"},
		{name: "cache ttl bad", yaml: "global:\n  cache_ttl: -1s\n", wantKey: "global.cache_ttl"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := config.Parse([]byte(tc.yaml))
			if err != nil {
				t.Fatal(err)
			}
			o, err := OptionsFromConfig(cfg, "docker")
			if tc.wantKey != "" {
				var ce *config.Error
				if !errors.As(err, &ce) || ce.Key != tc.wantKey {
					t.Fatalf("err = %v, want a config error naming %s", err, tc.wantKey)
				}
				if !strings.Contains(err.Error(), tc.wantKey) {
					t.Fatalf("message %q does not name the key", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, o)
		})
	}
	if o, err := OptionsFromConfig(nil, "docker"); err != nil || o.RetryAttempts != 3 {
		t.Fatalf("nil config: %+v %v", o, err)
	}
}
