package lxc

import (
	"context"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/subbus/subbus/internal/drivers"
)

// Keys this driver writes into an instance's config. User metadata lives
// under "user." too, so ours are namespaced.
const (
	keyManaged = "user.subbus.managed" // "true" on instances created here
	keyImage   = "user.subbus.image"   // the image the template named
	userPrefix = "user."
	subbusPref = "user.subbus."
)

// instance is GET /1.0/instances/<name> (recursion=1), plus state and
// snapshots with recursion=2.
type instance struct {
	Name            string                       `json:"name"`
	Status          string                       `json:"status"`
	StatusCode      int                          `json:"status_code"`
	Type            string                       `json:"type"`
	Architecture    string                       `json:"architecture"`
	Config          map[string]string            `json:"config"`
	Devices         map[string]map[string]string `json:"devices"`
	ExpandedConfig  map[string]string            `json:"expanded_config"`
	ExpandedDevices map[string]map[string]string `json:"expanded_devices"`
	Profiles        []string                     `json:"profiles"`
	Ephemeral       bool                         `json:"ephemeral"`
	Stateful        bool                         `json:"stateful"`
	Description     string                       `json:"description"`
	CreatedAt       time.Time                    `json:"created_at"`
	LastUsedAt      time.Time                    `json:"last_used_at"` // set by LXD when the instance starts
	Project         string                       `json:"project,omitempty"`
	State           *instanceState               `json:"state,omitempty"`
}

// Instance status codes (shared/api/status_code.go upstream).
const (
	stStarted  = 101
	stStopped  = 102
	stRunning  = 103
	stPending  = 105
	stStarting = 106
	stStopping = 107
	stFreezing = 109
	stFrozen   = 110
	stThawed   = 111
	stError    = 112
	stReady    = 113
)

// normState maps LXD's status to the portable state.
func normState(code int, status string) drivers.State {
	switch code {
	case stRunning, stStarted, stThawed, stReady:
		return drivers.StateRunning
	case stStopped:
		return drivers.StateStopped
	case stStarting, stPending:
		return drivers.StateStarting
	case stStopping:
		return drivers.StateStopping
	case stFrozen, stFreezing:
		return drivers.StatePaused
	case stError:
		return drivers.StateError
	}
	switch strings.ToLower(status) {
	case "running":
		return drivers.StateRunning
	case "stopped":
		return drivers.StateStopped
	case "frozen":
		return drivers.StatePaused
	case "error":
		return drivers.StateError
	}
	return drivers.StateUnknown
}

// portable converts the API's instance to the portable type.
func (in *instance) portable() drivers.Instance {
	cfg := in.ExpandedConfig
	if len(cfg) == 0 {
		cfg = in.Config
	}
	out := drivers.Instance{
		Name:        in.Name,
		ID:          in.Config["volatile.uuid"],
		State:       normState(in.StatusCode, in.Status),
		NativeState: in.Status,
		Created:     in.CreatedAt,
		Managed:     in.Config[keyManaged] == "true",
		Limits:      limitsOf(cfg),
	}
	if out.ID == "" {
		out.ID = in.Name
	}
	out.Image = in.Config[keyImage]
	if out.Image == "" {
		out.Image = in.Config["volatile.base_image"]
	}
	for k, v := range cfg {
		if env, ok := strings.CutPrefix(k, "environment."); ok {
			if out.Environment == nil {
				out.Environment = map[string]string{}
			}
			out.Environment[env] = v
		}
	}
	if in.State != nil && in.State.Pid > 0 && out.State == drivers.StateRunning {
		out.PID = int(in.State.Pid) // the container's init, on the host (only when the state was fetched)
	}
	if out.State == drivers.StateRunning && !in.LastUsedAt.IsZero() && in.LastUsedAt.Year() > 1970 {
		// LXD stamps last_used_at when it starts the instance (a never
		// used one has the zero time or the Unix epoch).
		out.StartedAt = in.LastUsedAt
	}
	for k, v := range in.Config {
		if strings.HasPrefix(k, userPrefix) && !strings.HasPrefix(k, subbusPref) {
			if out.Metadata == nil {
				out.Metadata = map[string]string{}
			}
			out.Metadata[strings.TrimPrefix(k, userPrefix)] = v
		}
	}
	devs := in.ExpandedDevices
	if len(devs) == 0 {
		devs = in.Devices
	}
	names := make([]string, 0, len(devs))
	for n := range devs {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		dev := devs[n]
		if dev["type"] == "disk" && dev["path"] != "/" && dev["source"] != "" {
			out.Volumes = append(out.Volumes, drivers.Volume{Source: dev["source"], Target: dev["path"],
				ReadOnly: dev["readonly"] == "true"})
		}
		if dev["type"] != "nic" {
			continue
		}
		nc := drivers.NetworkConfig{NetworkName: dev["network"], IPAddress: dev["ipv4.address"]}
		if nc.NetworkName == "" {
			nc.NetworkName = dev["parent"]
		}
		out.Networks = append(out.Networks, nc)
	}
	return out
}

// List returns every instance (one call, recursion=1).
func (d *Driver) List(ctx context.Context) ([]drivers.Instance, error) {
	list, err := d.list(ctx, 1)
	if err != nil {
		return nil, err
	}
	out := make([]drivers.Instance, 0, len(list))
	for i := range list {
		out = append(out, list[i].portable())
	}
	return out, nil
}

// list returns the raw instances; recursion 2 adds their state.
func (d *Driver) list(ctx context.Context, recursion int) ([]instance, error) {
	c, _, err := d.conn()
	if err != nil {
		return nil, err
	}
	var list []instance
	if _, err := c.query(ctx, http.MethodGet, "/1.0/instances?recursion="+strconv.Itoa(recursion), nil, &list); err != nil {
		return nil, err
	}
	return list, nil
}

// Get returns one instance, or NotFound.
func (d *Driver) Get(ctx context.Context, name string) (drivers.Instance, error) {
	c, _, err := d.conn()
	if err != nil {
		return drivers.Instance{}, err
	}
	// recursion=1 on one instance (API extension instance_get_full, LXD
	// 4.x and later) adds its state, which carries the init's PID; a
	// server without it answers without the state and the PID stays 0.
	var in instance
	if _, err := c.query(ctx, http.MethodGet, "/1.0/instances/"+esc(name)+"?recursion=1", nil, &in); err != nil {
		return drivers.Instance{}, err
	}
	return in.portable(), nil
}

// get returns the raw instance and its ETag.
func (d *Driver) get(ctx context.Context, name string) (*instance, string, error) {
	c, _, err := d.conn()
	if err != nil {
		return nil, "", err
	}
	var in instance
	etag, err := c.query(ctx, http.MethodGet, "/1.0/instances/"+esc(name), nil, &in)
	if err != nil {
		return nil, "", err
	}
	return &in, etag, nil
}
