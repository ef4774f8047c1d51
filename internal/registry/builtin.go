package registry

import (
	"github.com/subbus/subbus/internal/drivers/docker"
	"github.com/subbus/subbus/internal/drivers/lxc"
	"github.com/subbus/subbus/internal/drivers/process"
	"github.com/subbus/subbus/internal/drivers/proxmox"
	"github.com/subbus/subbus/internal/drivers/supervisor"
)

// Builtin returns every built-in driver. This file is where drivers are
// registered: one entry per driver package.
func Builtin() []Factory {
	return check([]Factory{
		// process, docker, supervisor, lxc: each driver package adds its entry here.
		{Name: process.Name, New: process.FromConfig, Detect: process.Detect},
		{Name: "lxc", New: lxc.NewFromConfig, Detect: lxc.Detect},
		{Name: "docker", New: docker.NewFromConfig, Detect: docker.Detect},
		{Name: supervisor.Name, New: supervisor.FromConfig, Detect: supervisor.Detect},
		{Name: proxmox.Name, New: proxmox.NewFromConfig, Detect: proxmox.Detect},
	})
}
