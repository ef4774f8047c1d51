package config

// SectionKeys are the keys the manager reads in every driver's section
// (and, as fallbacks, in global): retries, timeouts and circuit-breaker
// settings. internal/manager's OptionsFromConfig documents their meaning.
var SectionKeys = []string{
	"retry_attempts", "retry_delay", "retry_backoff", "retry_max_delay",
	"connection_timeout", "operation_timeout", "health_check_interval",
	"breaker_failures", "breaker_open_timeout", "stop_timeout", "lock_wait",
}

// SectionOptions declares SectionKeys as struct fields, so a driver's
// options struct can embed it (`yaml:",inline"`) and still decode its
// section with unknown keys rejected. The manager reads the values itself;
// drivers ignore them.
type SectionOptions struct {
	RetryAttempts       any `yaml:"retry_attempts"`
	RetryDelay          any `yaml:"retry_delay"`
	RetryBackoff        any `yaml:"retry_backoff"`
	RetryMaxDelay       any `yaml:"retry_max_delay"`
	ConnectionTimeout   any `yaml:"connection_timeout"`
	OperationTimeout    any `yaml:"operation_timeout"`
	HealthCheckInterval any `yaml:"health_check_interval"`
	BreakerFailures     any `yaml:"breaker_failures"`
	BreakerOpenTimeout  any `yaml:"breaker_open_timeout"`
	StopTimeout         any `yaml:"stop_timeout"`
	LockWait            any `yaml:"lock_wait"`
}
