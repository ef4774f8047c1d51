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

// Event is an instance (or substrate) lifecycle event as a driver's native
// feed reports it. The manager adds what it owns (an id, the driver and
// host, the request id, the source) when it re-emits the event; the wire
// form is messages.Event.
type Event struct {
	Type     EventType
	Time     time.Time
	Instance string // "" for substrate-level events
	State    State
	Details  map[string]string
	// Err is set on EventFailed: why the instance failed.
	Err error
}
