package messages

import (
	"fmt"
	"strings"
	"time"

	"github.com/subbus/subbus/internal/drivers"
)

// The fleet's JetStream KV buckets (docs/fleet.md):
//
//	SUBSTRATE_INVENTORY  <driver>.<host>.<instance>  InventoryRecord, written by the owning worker
//	SUBSTRATE_WORKERS    <host>                      WorkerHeartbeat, written by that host's worker
//	SUBSTRATE_LEASES     <driver>.<instance>         Lease, held by the worker changing a cluster-wide instance
//
// <instance> is the name encoded with KeyToken.
const (
	InventoryBucket = "SUBSTRATE_INVENTORY"
	WorkersBucket   = "SUBSTRATE_WORKERS"
	LeasesBucket    = "SUBSTRATE_LEASES"
)

// LeaseKey is the lease key of an instance of a cluster-wide driver.
func LeaseKey(driver, name string) string { return driver + "." + KeyToken(name) }

// Lease is the value of a SUBSTRATE_LEASES key: who changes the instance.
type Lease struct {
	Host      string    `json:"host"`
	Op        Op        `json:"op"`
	RequestID string    `json:"request_id"`
	Since     time.Time `json:"since"`
}

// KeyToken encodes an instance name as one KV key token, reversibly. It is
// EncodeToken with "=" instead of "~" as the escape prefix, because KV keys
// allow only letters, digits and "-/_=.": names that are valid subject
// tokens are kept as they are, others become "=" + unpadded base64url.
func KeyToken(name string) string {
	t := EncodeToken(name)
	if strings.HasPrefix(t, "~") {
		return "=" + t[1:]
	}
	return t
}

// DecodeKeyToken reverses KeyToken.
func DecodeKeyToken(tok string) (string, error) {
	if strings.HasPrefix(tok, "=") {
		tok = "~" + tok[1:]
	}
	return DecodeToken(tok)
}

// InventoryKey is the inventory key of an instance.
func InventoryKey(driver, host, name string) string {
	return driver + "." + host + "." + KeyToken(name)
}

// ParseInventoryKey splits an inventory key into driver, host and name.
func ParseInventoryKey(key string) (driver, host, name string, err error) {
	parts := strings.Split(key, ".")
	if len(parts) != 3 {
		return "", "", "", fmt.Errorf("inventory key %q: want <driver>.<host>.<instance>", key)
	}
	name, err = DecodeKeyToken(parts[2])
	return parts[0], parts[1], name, err
}

// InventoryRecord is the value of an inventory key: what the owning worker
// last knew of the instance, and when it last confirmed it with the
// substrate (an event about it, a request on it, or the periodic resync).
type InventoryRecord struct {
	Driver      string            `json:"driver"`
	Host        string            `json:"host"`
	Name        string            `json:"name"`
	ID          string            `json:"id"`
	State       drivers.State     `json:"state"`
	Image       string            `json:"image,omitempty"`
	Labels      map[string]string `json:"labels,omitempty"`
	Created     time.Time         `json:"created,omitzero"`
	Managed     bool              `json:"managed"`
	ConfirmedAt time.Time         `json:"confirmed_at"`
}

// NewInventoryRecord is the record of inst, owned by driver on host,
// confirmed at now.
func NewInventoryRecord(driver, host string, inst drivers.Instance, now time.Time) InventoryRecord {
	return InventoryRecord{Driver: driver, Host: host, Name: inst.Name, ID: inst.ID, State: inst.State,
		Image: inst.Image, Labels: inst.Metadata, Created: inst.Created, Managed: inst.Managed, ConfirmedAt: now.UTC()}
}

// Instance is the record as a wire instance (the fields a record keeps).
func (r InventoryRecord) Instance() Instance {
	return Instance{Name: r.Name, ID: r.ID, Driver: r.Driver, Host: r.Host, State: r.State, Image: r.Image,
		Metadata: r.Labels, Created: r.Created, Managed: r.Managed}
}

// WorkerHeartbeat is the value of a SUBSTRATE_WORKERS key: a worker
// rewrites it every Interval while it serves, and once with Stopped set
// when it shuts down cleanly.
type WorkerHeartbeat struct {
	Host    string   `json:"host"`
	Version string   `json:"version"`
	Drivers []string `json:"drivers"`
	// Instances counts each driver's instances on the host (at the last
	// inventory resync): the load the placement of create compares.
	Instances map[string]int `json:"instances"`
	Started   time.Time      `json:"started"`
	Time      time.Time      `json:"time"`
	// Interval is the heartbeat period; readers call the worker stale when
	// no heartbeat came for StaleAfter(Interval).
	Interval time.Duration `json:"interval_ns"`
	Stopped  bool          `json:"stopped,omitempty"`
}

// Worker liveness, derived by readers from the last heartbeat.
const (
	LivenessUp    = "up"    // heartbeat fresh
	LivenessStale = "stale" // heartbeats missing: crashed, partitioned or overloaded
	LivenessDown  = "down"  // the worker said it stopped
)

// StaleAfter is how long after its last heartbeat a worker is stale: three
// missed heartbeats.
func StaleAfter(interval time.Duration) time.Duration { return 3 * interval }

// Liveness is the worker's state at now.
func (h WorkerHeartbeat) Liveness(now time.Time) string {
	switch {
	case h.Stopped:
		return LivenessDown
	case now.Sub(h.Time) > StaleAfter(max(h.Interval, time.Second)):
		return LivenessStale
	}
	return LivenessUp
}

// Serves reports whether the worker serves driver.
func (h WorkerHeartbeat) Serves(driver string) bool {
	for _, d := range h.Drivers {
		if d == driver {
			return true
		}
	}
	return false
}
