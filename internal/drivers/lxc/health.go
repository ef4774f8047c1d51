package lxc

import (
	"context"
	"fmt"
	"net/http"
	"strconv"

	"github.com/subbus/subbus/internal/drivers"
)

// Health reads the server (GET /1.0), its storage pools and resources,
// and counts instances by state. No storage pool, or a pool that is not
// created, makes the server unhealthy (nothing can be created).
func (d *Driver) Health(ctx context.Context) (drivers.Health, error) {
	c, _, err := d.conn()
	if err != nil {
		return drivers.Health{}, err
	}
	var s server
	if _, err := c.query(ctx, http.MethodGet, "/1.0", nil, &s); err != nil {
		return drivers.Health{}, err
	}
	h := drivers.Health{
		Healthy:    true,
		Version:    s.Environment.ServerVersion,
		APIVersion: s.APIVersion,
		Details: map[string]string{
			"server":         s.Environment.Server,
			"api_extensions": strconv.Itoa(len(s.APIExtensions)),
			"auth":           s.Auth,
			"kernel":         s.Environment.Kernel,
			"driver":         s.Environment.Driver + " " + s.Environment.DriverVersion,
		},
	}
	if h.Details["server"] == "" {
		h.Details["server"] = "lxd"
	}
	var pools []struct {
		Name   string `json:"name"`
		Driver string `json:"driver"`
		Status string `json:"status"`
	}
	if _, err := c.query(ctx, http.MethodGet, "/1.0/storage-pools?recursion=1", nil, &pools); err != nil {
		h.Issues = append(h.Issues, "storage pools: "+err.Error())
	} else {
		h.Details["storage_pools"] = strconv.Itoa(len(pools))
		if len(pools) == 0 {
			h.Healthy = false
			h.Issues = append(h.Issues, "no storage pool: run `lxd init`")
		}
		for _, p := range pools {
			if p.Status != "" && p.Status != "Created" {
				h.Healthy = false
				h.Issues = append(h.Issues, fmt.Sprintf("storage pool %s (%s) is %s", p.Name, p.Driver, p.Status))
			}
		}
	}
	var res struct {
		CPU struct {
			Total int `json:"total"`
		} `json:"cpu"`
		Memory struct {
			Used  int64 `json:"used"`
			Total int64 `json:"total"`
		} `json:"memory"`
	}
	if _, err := c.query(ctx, http.MethodGet, "/1.0/resources", nil, &res); err == nil {
		h.Details[drivers.DetailHostCPUs] = strconv.Itoa(res.CPU.Total)
		h.Details[drivers.DetailHostMemoryMiB] = strconv.FormatInt(res.Memory.Total>>20, 10)
		h.Details[drivers.DetailHostMemoryUsedMiB] = strconv.FormatInt(res.Memory.Used>>20, 10)
	} else {
		h.Issues = append(h.Issues, "resources: "+err.Error())
	}
	list, err := d.List(ctx)
	if err != nil {
		return drivers.Health{}, err
	}
	h.CountStates(list)
	return h, nil
}
