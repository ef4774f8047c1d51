package messages

import (
	"encoding/json"
	"slices"
	"strconv"
	"time"
)

// The hot path of the worker's replies (docs/benchmarks.md "Bus
// efficiency"): get and list results are encoded here without reflection,
// byte for byte as json.Marshal encodes them (a test compares the two on
// generated instances). Anything unusual — a string json.Marshal would
// escape, non-zero limits, networks, a time it cannot encode — is handed
// to json.Marshal for that value or, failing that, for the whole result.

// marshalResult encodes a result as json.Marshal does.
func marshalResult(v any) ([]byte, error) {
	switch r := v.(type) {
	case Instance:
		if b, ok := appendInstance(make([]byte, 0, 256), &r); ok {
			return b, nil
		}
	case []Instance:
		if r == nil {
			break
		}
		b := append(make([]byte, 0, 256*len(r)+2), '[')
		ok := true
		for i := range r {
			if i > 0 {
				b = append(b, ',')
			}
			if b, ok = appendInstance(b, &r[i]); !ok {
				break
			}
		}
		if ok {
			return append(b, ']'), nil
		}
	}
	return json.Marshal(v)
}

// appendInstance appends i as json.Marshal encodes an Instance; ok is
// false when it cannot (the caller then uses json.Marshal).
func appendInstance(b []byte, i *Instance) (_ []byte, ok bool) {
	b = append(b, `{"name":`...)
	b = appendString(b, i.Name)
	b = append(b, `,"id":`...)
	b = appendString(b, i.ID)
	b = append(b, `,"driver":`...)
	b = appendString(b, i.Driver)
	b = append(b, `,"host":`...)
	b = appendString(b, i.Host)
	b = append(b, `,"state":`...)
	b = appendString(b, string(i.State))
	if i.NativeState != "" {
		b = append(b, `,"native_state":`...)
		b = appendString(b, i.NativeState)
	}
	if i.Image != "" {
		b = append(b, `,"image":`...)
		b = appendString(b, i.Image)
	}
	if !i.Created.IsZero() {
		t, err := i.Created.MarshalJSON()
		if err != nil {
			return b, false
		}
		b = append(b, `,"created":`...)
		b = append(b, t...)
	}
	if len(i.Metadata) > 0 {
		b = append(b, `,"metadata":`...)
		b = appendStringMap(b, i.Metadata)
	}
	if !i.Limits.IsZero() {
		l, err := json.Marshal(i.Limits)
		if err != nil {
			return b, false
		}
		b = append(b, `,"limits":`...)
		b = append(b, l...)
	}
	if len(i.Networks) > 0 {
		n, err := json.Marshal(i.Networks)
		if err != nil {
			return b, false
		}
		b = append(b, `,"networks":`...)
		b = append(b, n...)
	}
	if i.Managed {
		b = append(b, `,"managed":true`...)
	} else {
		b = append(b, `,"managed":false`...)
	}
	// The fields after managed: what the user gave and the substrate
	// knows (instanceTail names them, in order).
	if len(i.Command) > 0 {
		b = append(b, `,"command":[`...)
		for n, c := range i.Command {
			if n > 0 {
				b = append(b, ',')
			}
			b = appendString(b, c)
		}
		b = append(b, ']')
	}
	if len(i.Environment) > 0 {
		b = append(b, `,"environment":`...)
		b = appendStringMap(b, i.Environment)
	}
	if len(i.Volumes) > 0 {
		v, err := json.Marshal(i.Volumes)
		if err != nil {
			return b, false
		}
		b = append(b, `,"volumes":`...)
		b = append(b, v...)
	}
	if i.WorkDir != "" {
		b = append(b, `,"workdir":`...)
		b = appendString(b, i.WorkDir)
	}
	if i.User != "" {
		b = append(b, `,"user":`...)
		b = appendString(b, i.User)
	}
	if i.PID != 0 {
		b = append(b, `,"pid":`...)
		b = strconv.AppendInt(b, int64(i.PID), 10)
	}
	if i.ExitCode != nil {
		b = append(b, `,"exit_code":`...)
		b = strconv.AppendInt(b, int64(*i.ExitCode), 10)
	}
	if !i.StartedAt.IsZero() {
		t, err := i.StartedAt.MarshalJSON()
		if err != nil {
			return b, false
		}
		b = append(b, `,"started_at":`...)
		b = append(b, t...)
	}
	return append(b, '}'), true
}

// instanceTail is Instance from Command on, the fields appendInstance
// writes after managed; TestInstanceTailMatches keeps the two in step.
type instanceTail struct {
	Command     []string          `json:"command,omitempty"`
	Environment map[string]string `json:"environment,omitempty"`
	Volumes     []Volume          `json:"volumes,omitempty"`
	WorkDir     string            `json:"workdir,omitempty"`
	User        string            `json:"user,omitempty"`
	PID         int               `json:"pid,omitempty"`
	ExitCode    *int              `json:"exit_code,omitempty"`
	StartedAt   time.Time         `json:"started_at,omitzero"`
}

// appendStringMap appends m as json.Marshal writes a map[string]string:
// keys sorted.
func appendStringMap(b []byte, m map[string]string) []byte {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	b = append(b, '{')
	for n, k := range keys {
		if n > 0 {
			b = append(b, ',')
		}
		b = appendString(b, k)
		b = append(b, ':')
		b = appendString(b, m[k])
	}
	return append(b, '}')
}

// appendString appends s as a JSON string the way json.Marshal writes it:
// printable ASCII other than " \ < > & as is, anything else through
// json.Marshal (its escapes, U+FFFD for invalid UTF-8).
func appendString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			q, _ := json.Marshal(s)
			return append(b, q...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}
