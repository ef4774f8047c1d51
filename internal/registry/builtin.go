package registry

import (
	"github.com/subbus/subbus/internal/drivers/docker"
	"github.com/subbus/subbus/internal/drivers/libvirt"
	"github.com/subbus/subbus/internal/drivers/lxc"
	"github.com/subbus/subbus/internal/drivers/process"
	"github.com/subbus/subbus/internal/drivers/proxmox"
	"github.com/subbus/subbus/internal/drivers/supervisor"
)

// registrations lists every built-in driver, one line per driver package:
// this is where a driver is registered, with its name, its configuration
// section, its constructor and its detector.
func registrations() []Factory {
	return check([]Factory{
		{Name: process.Name, Section: process.Name, New: process.FromConfig, Detect: process.Detect},
		{Name: lxc.Name, Section: lxc.Name, New: lxc.FromConfig, Detect: lxc.Detect},
		{Name: docker.Name, Section: docker.Name, New: docker.FromConfig, Detect: docker.Detect},
		{Name: supervisor.Name, Section: supervisor.Name, New: supervisor.FromConfig, Detect: supervisor.Detect},
		{Name: proxmox.Name, Section: proxmox.Name, New: proxmox.FromConfig, Detect: proxmox.Detect},
		{Name: libvirt.Name, Section: libvirt.Name, New: libvirt.FromConfig, Detect: libvirt.Detect},
	})
}
