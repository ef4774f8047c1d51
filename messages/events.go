package messages

import (
	"time"
)

// CloudEvent is a CloudEvents 1.0 event in structured JSON mode, as stored
// in SUBSTRATE_EVENTS. ID is also the Nats-Msg-Id, so a retried publish is
// stored once.
type CloudEvent struct {
	SpecVersion     string    `json:"specversion"`       // "1.0"
	ID              string    `json:"id"`                // = Data.ID
	Source          string    `json:"source"`            // "subbus://<host>/<driver>"
	Type            string    `json:"type"`              // "io.subbus.instance.<event type>"
	Subject         string    `json:"subject,omitempty"` // instance name; absent for substrate events (an optional CloudEvents attribute is never empty)
	Time            time.Time `json:"time"`              // RFC 3339
	DataContentType string    `json:"datacontenttype"`   // "application/json"
	Data            Event     `json:"data"`
}

// CloudEventTypePrefix prefixes every event type.
const CloudEventTypePrefix = "io.subbus.instance."

// NewCloudEvent wraps an event (whose ID, Driver, Host are set).
func NewCloudEvent(e Event) CloudEvent {
	return CloudEvent{
		SpecVersion: "1.0", ID: e.ID, Source: "subbus://" + e.Host + "/" + e.Driver,
		Type: CloudEventTypePrefix + string(e.Type), Subject: e.Instance, Time: e.Time,
		DataContentType: "application/json", Data: e,
	}
}

// MetricsMessage is one sample stored in SUBSTRATE_METRICS.
type MetricsMessage struct {
	Driver   string        `json:"driver"`
	Host     string        `json:"host"`
	Instance string        `json:"instance"`
	Time     time.Time     `json:"time"`
	Usage    ResourceUsage `json:"usage"`
}
