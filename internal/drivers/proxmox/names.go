package proxmox

import (
	"strings"

	"github.com/subbus/subbus/internal/drivers"
)

// NameRule: a guest's name is a DNS name (PVE's dns-name format, the VM
// name and the container hostname): labels of letters, digits and '-'
// (not starting or ending with '-') joined by '.', no '_'. All digits
// address a guest by VMID and cannot name a new one.
func (d *Driver) NameRule() drivers.NameRule {
	return drivers.NameRule{
		Text: "a Proxmox guest name is a DNS name (labels of letters, digits and '-', not starting or ending with '-', joined by '.'; no '_'); all digits address a guest by VMID and cannot name a new one",
		Valid: func(name string, create bool) bool {
			if isVMIDName(name) {
				return !create
			}
			for _, l := range strings.Split(name, ".") {
				if !drivers.DNSLabel(l) {
					return false
				}
			}
			return true
		},
	}
}
