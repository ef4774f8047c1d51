package drivers

import "time"

// EventType names a lifecycle event.
type EventType string

const (
	EventCreated          EventType = "created"
	EventStarted          EventType = "started"
	EventStopped          EventType = "stopped"
	EventDeleted          EventType = "deleted"
	EventRestarted        EventType = "restarted"
	EventFailed           EventType = "failed" // a mutation failed, or the instance crashed / was OOM-killed
	EventSnapshotCreated  EventType = "snapshot_created"
	EventSnapshotRestored EventType = "snapshot_restored"
	EventSnapshotDeleted  EventType = "snapshot_deleted"
	EventCloned           EventType = "cloned"
	EventLimitsChanged    EventType = "limits_changed"
	EventNetworkAttached  EventType = "network_attached"
	EventNetworkDetached  EventType = "network_detached"
	// EventAppeared and EventVanished report instances created or removed
	// outside this system, seen in a native feed or a resync.
	EventAppeared EventType = "appeared"
	EventVanished EventType = "vanished"
	// EventStateChanged reports any other state change seen in a native feed.
	EventStateChanged EventType = "state_changed"
	// Substrate-level events (Instance is empty).
	EventBreakerOpened   EventType = "breaker_opened"
	EventBreakerHalfOpen EventType = "breaker_half_open"
	EventBreakerClosed   EventType = "breaker_closed"
	EventConnected       EventType = "connected"
	EventDisconnected    EventType = "disconnected"
)

// Event sources.
const (
	SourceManager = "manager" // a mutation made through this system
	SourceNative  = "native"  // the substrate's own feed (changes made elsewhere)
)

// Event is an instance (or substrate) lifecycle event. Drivers emit it from
// their native feed filling Type, Instance, Time, State and Details; the
// manager fills the rest.
type Event struct {
	ID        string            `json:"id"`
	Type      EventType         `json:"type"`
	Time      time.Time         `json:"time"`
	Driver    string            `json:"driver"`
	Host      string            `json:"host"`
	Instance  string            `json:"instance,omitempty"`
	RequestID string            `json:"request_id,omitempty"`
	Source    string            `json:"source"`
	State     State             `json:"state,omitempty"`
	Details   map[string]string `json:"details,omitempty"`
	// Error is set on EventFailed.
	Error *ErrorInfo `json:"error,omitempty"`
}

// ErrorInfo is the wire form of a classified error.
type ErrorInfo struct {
	Code      Code   `json:"code"`
	Message   string `json:"message"`
	Retryable bool   `json:"retryable"`
}

// InfoOf returns the wire form of err (nil for nil).
func InfoOf(err error) *ErrorInfo {
	if err == nil {
		return nil
	}
	c := CodeOf(err)
	return &ErrorInfo{Code: c, Message: err.Error(), Retryable: c.Retryable()}
}
