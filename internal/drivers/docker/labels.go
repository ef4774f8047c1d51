package docker

import (
	"encoding/json"
	"strings"
	"time"

	"github.com/moby/moby/api/types/container"

	"github.com/subbus/subbus/internal/drivers"
)

// Owner labels on every container this fleet creates.
const (
	LabelManaged   = "io.subbus.managed"    // "true"
	LabelHost      = "io.subbus.host"       // the creating worker's host id
	LabelRequestID = "io.subbus.request-id" // the creating request's id
	LabelCreated   = "io.subbus.created"    // RFC 3339 time of the create call
	LabelTemplate  = "io.subbus.template"   // the creation template, JSON
	// LabelMetaPrefix + key carries template metadata key.
	LabelMetaPrefix = "io.subbus.meta."
	// LabelCloneImage names the image a clone was created from (removed
	// with the clone).
	LabelCloneImage = "io.subbus.clone-image"
	// LabelRestoredFrom names the snapshot a container was restored from.
	LabelRestoredFrom = "io.subbus.restored-from"
	// LabelOwnImage names the image tag a restored container was created
	// from (subbus-restore/<instance>:<snapshot>-<random>), a second tag
	// of the snapshot image that the container owns: deleting the
	// snapshot then only removes the snapshot's tag, and the own tag goes
	// with the container, so no untagged image is ever left behind.
	LabelOwnImage = "io.subbus.own-image"
)

// Snapshot image labels.
const (
	LabelSnapInstance = "io.subbus.snapshot.instance"
	LabelSnapName     = "io.subbus.snapshot.name"
	LabelCloneOf      = "io.subbus.clone.of"
)

// ownerLabels are the labels that say who made a container; they are
// blanked in committed images so containers made from them by hand are
// not mistaken for managed ones.
var ownerLabels = []string{LabelManaged, LabelHost, LabelRequestID, LabelCreated, LabelTemplate, LabelCloneImage, LabelRestoredFrom, LabelOwnImage}

func isManaged(labels map[string]string) bool { return labels[LabelManaged] == "true" }

// labelsFor returns the labels of a container created from t.
func (d *Driver) labelsFor(t drivers.InstanceTemplate, requestID string) (map[string]string, error) {
	tj, err := json.Marshal(t)
	if err != nil {
		return nil, drivers.Errorf(drivers.InvalidArgument, "template: %w", err)
	}
	l := map[string]string{
		LabelManaged:  "true",
		LabelHost:     d.opts.HostID,
		LabelCreated:  time.Now().UTC().Format(time.RFC3339Nano),
		LabelTemplate: string(tj),
	}
	if requestID != "" {
		l[LabelRequestID] = requestID
	}
	for k, v := range t.Metadata {
		l[LabelMetaPrefix+k] = v
	}
	return l, nil
}

// templateFromLabels returns the template a managed container was made
// from, if its label is present and valid.
func templateFromLabels(labels map[string]string) (drivers.InstanceTemplate, bool) {
	var t drivers.InstanceTemplate
	s, ok := labels[LabelTemplate]
	if !ok || s == "" {
		return t, false
	}
	if err := json.Unmarshal([]byte(s), &t); err != nil {
		return t, false
	}
	return t, true
}

// metadataFromLabels returns io.subbus.meta.* labels as metadata.
func metadataFromLabels(labels map[string]string) map[string]string {
	var m map[string]string
	for k, v := range labels {
		if key, ok := strings.CutPrefix(k, LabelMetaPrefix); ok {
			if m == nil {
				m = map[string]string{}
			}
			m[key] = v
		}
	}
	return m
}

// stateOf normalizes Docker's container state.
func stateOf(s container.ContainerState, exitCode int, oomKilled bool) drivers.State {
	switch s {
	case container.StateRunning:
		return drivers.StateRunning
	case container.StateCreated:
		return drivers.StateStopped
	case container.StateExited:
		if oomKilled {
			return drivers.StateError
		}
		return drivers.StateStopped
	case container.StatePaused:
		return drivers.StatePaused
	case container.StateRestarting:
		return drivers.StateStarting
	case container.StateRemoving:
		return drivers.StateStopping
	case container.StateDead:
		return drivers.StateError
	}
	return drivers.StateUnknown
}

// containerName strips the leading slash Docker puts on names.
func containerName(names ...string) string {
	for _, n := range names {
		n = strings.TrimPrefix(n, "/")
		if n != "" && !strings.Contains(n, "/") {
			return n
		}
	}
	return ""
}
