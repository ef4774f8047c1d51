package proxmox

import (
	"context"
	"fmt"
	"net/url"
	"sort"
	"strconv"
	"strings"

	gp "github.com/luthermonson/go-proxmox"

	"github.com/subbus/subbus/internal/drivers"
)

// lowStorage is the free fraction below which a storage is an issue.
const lowStorage = 0.10

// clusterStatus is one entry of GET /cluster/status.
type clusterStatus struct {
	Type    string `json:"type"`
	Name    string `json:"name"`
	Quorate num    `json:"quorate"`
	Nodes   num    `json:"nodes"`
	Online  num    `json:"online"`
}

// storageEntry is one entry of GET /nodes/{node}/storage.
type storageEntry struct {
	Storage string `json:"storage"`
	Type    string `json:"type"`
	Active  num    `json:"active"`
	Enabled num    `json:"enabled"`
	Avail   num    `json:"avail"`
	Total   num    `json:"total"`
	Used    num    `json:"used"`
	Content string `json:"content"`
}

// Health reads /version, /nodes (offline nodes are issues), /cluster/status
// (no quorum makes the cluster unhealthy: PVE refuses changes then), the
// create node's status and storages (the configured storage missing or
// inactive is unhealthy; any storage under 10 % free is an issue), and
// counts guests by state. Usage is the create node's CPU and memory.
func (d *Driver) Health(ctx context.Context) (drivers.Health, error) {
	c, node, err := d.conn()
	if err != nil {
		return drivers.Health{}, err
	}
	var v gp.Version
	if err := c.Get(ctx, "/version", &v); err != nil {
		return drivers.Health{}, fmt.Errorf("proxmox: GET /version: %w", err)
	}
	h := drivers.Health{Healthy: true, Version: v.Version, APIVersion: "api2/json",
		Details: map[string]string{"release": v.Release, "repoid": v.RepoID, "node": node}}
	issue := func(fatal bool, format string, args ...any) {
		h.Issues = append(h.Issues, fmt.Sprintf(format, args...))
		if fatal {
			h.Healthy = false
		}
	}

	var nodes []nodeEntry
	if err := c.Get(ctx, "/nodes", &nodes); err != nil {
		return drivers.Health{}, fmt.Errorf("proxmox: GET /nodes: %w", err)
	}
	sortNodes(nodes)
	var names []string
	for _, n := range nodes {
		names = append(names, n.Node)
		if n.Status != "online" {
			issue(n.Node == node, "node %s is %s", n.Node, n.Status)
		}
		if n.Node == node && n.Status == "online" {
			u := drivers.ResourceUsage{Measured: drivers.MeasureCPU | drivers.MeasureMemory}
			u.CPUPercent = float64(n.CPU) * float64(n.MaxCPU) * 100
			u.Counters.MemoryBytes = uint64(n.Mem)
			u.MemoryMB = float64(n.Mem) / (1 << 20)
			h.Usage = &u
			h.Details["uptime_s"] = strconv.Itoa(int(n.Uptime))
		}
	}
	h.Details["nodes"] = strings.Join(names, ",")

	var cs []clusterStatus
	if err := c.Get(ctx, "/cluster/status", &cs); err != nil {
		return drivers.Health{}, fmt.Errorf("proxmox: GET /cluster/status: %w", err)
	}
	for _, s := range cs {
		if s.Type == "cluster" {
			h.Details["cluster"] = s.Name
			if s.Quorate != 1 {
				issue(true, "cluster %s has no quorum: PVE refuses changes", s.Name)
			}
		}
	}

	var stores []storageEntry
	if err := c.Get(ctx, "/nodes/"+url.PathEscape(node)+"/storage", &stores); err != nil {
		return drivers.Health{}, fmt.Errorf("proxmox: GET /nodes/%s/storage: %w", node, err)
	}
	sort.Slice(stores, func(i, j int) bool { return stores[i].Storage < stores[j].Storage })
	found := false
	for _, s := range stores {
		if s.Storage == d.opts.Storage {
			found = true
			if s.Active != 1 {
				issue(true, "storage %s (proxmox.storage) is not active on node %s", s.Storage, node)
			}
		}
		if s.Total > 0 {
			free := float64(s.Avail) / float64(s.Total)
			h.Details["storage_free_"+s.Storage] = fmt.Sprintf("%.0f%%", free*100)
			if free < lowStorage {
				issue(false, "storage %s on node %s is %.0f%% free", s.Storage, node, free*100)
			}
		}
	}
	if !found {
		issue(true, "storage %s (proxmox.storage) does not exist on node %s", d.opts.Storage, node)
	}

	list, err := d.resources(ctx)
	if err != nil {
		return drivers.Health{}, err
	}
	h.Instances = map[drivers.State]int{}
	for _, r := range list {
		h.Instances[r.state()]++
	}
	return h, nil
}
