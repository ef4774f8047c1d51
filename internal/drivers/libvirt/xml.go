package libvirt

import (
	"bytes"
	"encoding/xml"
	"errors"
	"io"
	"sort"
	"strings"
	"time"

	"libvirt.org/go/libvirtxml"

	"github.com/subbus/subbus/internal/drivers"
)

// OwnerNS is the XML namespace of the owner marker this driver writes in
// the <metadata> of the domains it creates.
const OwnerNS = "urn:subbus:libvirt:1"

// agentChannel is the virtio-serial port name of the QEMU guest agent.
const agentChannel = "org.qemu.guest_agent.0"

// owner is the marker in a managed domain's <metadata>: what the template
// said that libvirt's own XML does not keep, and the volumes this driver
// created (the only ones Delete removes).
type owner struct {
	XMLName xml.Name  `xml:"urn:subbus:libvirt:1 instance"`
	Image   string    `xml:"image,attr,omitempty"`
	Created string    `xml:"created,attr,omitempty"` // RFC 3339
	Volumes []string  `xml:"volume"`                 // paths of owned volumes
	Env     []keyVal  `xml:"env"`
	Meta    []keyVal  `xml:"meta"`
	created time.Time // parsed Created
}

type keyVal struct {
	Key   string `xml:"key,attr"`
	Value string `xml:",chardata"`
}

func toKeyVals(m map[string]string) []keyVal {
	out := make([]keyVal, 0, len(m))
	for k, v := range m {
		out = append(out, keyVal{Key: k, Value: v})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out
}

func fromKeyVals(kv []keyVal) map[string]string {
	if len(kv) == 0 {
		return nil
	}
	m := make(map[string]string, len(kv))
	for _, x := range kv {
		m[x.Key] = x.Value
	}
	return m
}

// marshalOwner renders the marker for <metadata>.
func marshalOwner(o *owner) (string, error) {
	b, err := xml.Marshal(o)
	return string(b), err
}

// findOwner returns the marker in a domain's <metadata> inner XML, or nil.
func findOwner(meta *libvirtxml.DomainMetadata) *owner {
	if meta == nil || strings.TrimSpace(meta.XML) == "" {
		return nil
	}
	dec := xml.NewDecoder(strings.NewReader(meta.XML))
	for {
		tok, err := dec.Token()
		if err != nil {
			return nil
		}
		se, ok := tok.(xml.StartElement)
		if !ok || se.Name.Space != OwnerNS || se.Name.Local != "instance" {
			continue
		}
		var o owner
		if err := dec.DecodeElement(&o, &se); err != nil {
			return nil
		}
		o.created, _ = time.Parse(time.RFC3339, o.Created)
		return &o
	}
}

// replaceOwner returns meta's inner XML with the marker replaced by o
// (other applications' metadata is kept).
func replaceOwner(meta *libvirtxml.DomainMetadata, o *owner) (string, error) {
	mine, err := marshalOwner(o)
	if err != nil {
		return "", err
	}
	if meta == nil || strings.TrimSpace(meta.XML) == "" {
		return mine, nil
	}
	// Copy every top-level element but ours, token by token.
	var out bytes.Buffer
	enc := xml.NewEncoder(&out)
	dec := xml.NewDecoder(strings.NewReader(meta.XML))
	depth, skip := 0, false
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return "", err
		}
		switch t := tok.(type) {
		case xml.StartElement:
			if depth == 0 && t.Name.Space == OwnerNS {
				skip = true
			}
			depth++
		case xml.EndElement:
			depth--
			if skip && depth == 0 {
				skip = false
				continue
			}
		}
		if !skip {
			if err := enc.EncodeToken(xml.CopyToken(tok)); err != nil {
				return "", err
			}
		}
	}
	if err := enc.Flush(); err != nil {
		return "", err
	}
	return out.String() + mine, nil
}

// normalize maps a libvirt domain state to the portable state and the
// native word for it.
func normalize(state int32) (drivers.State, string) {
	switch state {
	case 1: // VIR_DOMAIN_RUNNING
		return drivers.StateRunning, "running"
	case 2: // VIR_DOMAIN_BLOCKED
		return drivers.StateRunning, "blocked"
	case 3: // VIR_DOMAIN_PAUSED
		return drivers.StatePaused, "paused"
	case 4: // VIR_DOMAIN_SHUTDOWN (being shut down)
		return drivers.StateStopping, "shutdown"
	case 5: // VIR_DOMAIN_SHUTOFF
		return drivers.StateStopped, "shut off"
	case 6: // VIR_DOMAIN_CRASHED
		return drivers.StateError, "crashed"
	case 7: // VIR_DOMAIN_PMSUSPENDED
		return drivers.StatePaused, "pmsuspended"
	}
	return drivers.StateUnknown, "nostate"
}

// active reports whether a libvirt state has a QEMU process.
func active(state int32) bool { return state != 5 && state != 0 && state != 6 }

// toMiB converts a libvirtxml memory value with its unit to MiB.
func toMiB(v uint, unit string) int64 {
	b := uint64(v)
	switch strings.ToLower(unit) {
	case "b", "bytes":
	case "k", "kib", "":
		b *= 1 << 10
	case "kb":
		b *= 1000
	case "m", "mib":
		b *= 1 << 20
	case "mb":
		b *= 1000 * 1000
	case "g", "gib":
		b *= 1 << 30
	case "gb":
		b *= 1000 * 1000 * 1000
	case "t", "tib":
		b *= 1 << 40
	}
	return int64(b >> 20)
}

// limitsOf reads vcpus and memory from a domain definition.
func limitsOf(def *libvirtxml.Domain) drivers.ResourceLimits {
	var l drivers.ResourceLimits
	if def.VCPU != nil {
		n := def.VCPU.Value
		if def.VCPU.Current > 0 {
			n = def.VCPU.Current
		}
		l.CPUCores = float64(n)
	}
	switch {
	case def.CurrentMemory != nil:
		l.MemoryMB = toMiB(def.CurrentMemory.Value, def.CurrentMemory.Unit)
	case def.Memory != nil:
		l.MemoryMB = toMiB(def.Memory.Value, def.Memory.Unit)
	}
	if def.CPUTune != nil && def.CPUTune.Period != nil && def.CPUTune.Quota != nil && def.CPUTune.Period.Value > 0 &&
		def.CPUTune.Quota.Value > 0 {
		// vcpu_quota is per vcpu: the domain may use quota/period of each.
		q := float64(def.CPUTune.Quota.Value) / float64(def.CPUTune.Period.Value) * l.CPUCores
		if q < l.CPUCores {
			l.CPUCores = float64(int(q*100+0.5)) / 100
		}
	}
	return l
}

// networksOf lists the libvirt networks a domain's interfaces use.
func networksOf(def *libvirtxml.Domain) []drivers.NetworkConfig {
	if def.Devices == nil {
		return nil
	}
	var out []drivers.NetworkConfig
	for _, ifc := range def.Devices.Interfaces {
		if ifc.Source != nil && ifc.Source.Network != nil && ifc.Source.Network.Network != "" {
			out = append(out, drivers.NetworkConfig{NetworkName: ifc.Source.Network.Network})
		}
	}
	return out
}

// hasAgentChannel reports whether the domain has a guest-agent channel.
func hasAgentChannel(def *libvirtxml.Domain) (present, connected bool) {
	if def.Devices == nil {
		return false, false
	}
	for _, c := range def.Devices.Channels {
		if c.Target != nil && c.Target.VirtIO != nil && c.Target.VirtIO.Name == agentChannel {
			return true, c.Target.VirtIO.State == "connected"
		}
	}
	return false, false
}

// consoleLogOf returns the file the domain's serial console is logged to.
func consoleLogOf(def *libvirtxml.Domain) string {
	if def.Devices == nil {
		return ""
	}
	for _, s := range def.Devices.Serials {
		if s.Log != nil && s.Log.File != "" {
			return s.Log.File
		}
		if s.Source != nil && s.Source.File != nil && s.Source.File.Path != "" {
			return s.Source.File.Path
		}
	}
	for _, c := range def.Devices.Consoles {
		if c.Log != nil && c.Log.File != "" {
			return c.Log.File
		}
	}
	return ""
}
