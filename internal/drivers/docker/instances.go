package docker

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/client"

	"github.com/subbus/subbus/internal/drivers"
)

// List implements drivers.Driver: every container of the engine, managed
// or not, in one request (like `docker ps -a`).
func (d *Driver) List(ctx context.Context) ([]drivers.Instance, error) {
	c, err := d.client()
	if err != nil {
		return nil, err
	}
	res, err := c.ContainerList(ctx, client.ContainerListOptions{All: true})
	if err != nil {
		return nil, fmt.Errorf("list containers: %w", err)
	}
	out := make([]drivers.Instance, 0, len(res.Items))
	for _, s := range res.Items {
		out = append(out, d.fromSummary(s))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Get implements drivers.Driver.
func (d *Driver) Get(ctx context.Context, name string) (drivers.Instance, error) {
	ins, err := d.inspect(ctx, name)
	if err != nil {
		return drivers.Instance{}, err
	}
	return d.fromInspect(ins), nil
}

// inspect returns the container called name, NotFound naming it if none.
// Only an exact name matches (Docker would also accept an ID prefix).
func (d *Driver) inspect(ctx context.Context, name string) (container.InspectResponse, error) {
	c, err := d.client()
	if err != nil {
		return container.InspectResponse{}, err
	}
	res, err := c.ContainerInspect(ctx, name, client.ContainerInspectOptions{})
	if err != nil {
		return container.InspectResponse{}, fmt.Errorf("docker: inspect container %q: %w", name, err)
	}
	if containerName(res.Container.Name) != name {
		return container.InspectResponse{}, drivers.Errorf(drivers.NotFound, "docker: no container %q", name)
	}
	return res.Container, nil
}

func (d *Driver) fromSummary(s container.Summary) drivers.Instance {
	i := drivers.Instance{
		Name:        containerName(s.Names...),
		ID:          s.ID,
		State:       stateOf(s.State, 0, false),
		NativeState: string(s.State),
		Image:       imageOf(s.Labels, s.Image),
		Created:     time.Unix(s.Created, 0).UTC(),
		Metadata:    metadataFromLabels(s.Labels),
		Managed:     isManaged(s.Labels),
	}
	if s.NetworkSettings != nil {
		i.Networks = endpoints(s.NetworkSettings.Networks)
	}
	return i
}

func (d *Driver) fromInspect(c container.InspectResponse) drivers.Instance {
	i := drivers.Instance{
		Name:    containerName(c.Name),
		ID:      c.ID,
		State:   drivers.StateUnknown,
		Managed: false,
	}
	if c.Config != nil {
		i.Image = imageOf(c.Config.Labels, c.Config.Image)
		i.Metadata = metadataFromLabels(c.Config.Labels)
		i.Managed = isManaged(c.Config.Labels)
		i.WorkDir, i.User = c.Config.WorkingDir, c.Config.User
		for _, e := range c.Config.Env { // the image's environment too: what the container runs with
			k, v, _ := strings.Cut(e, "=")
			if i.Environment == nil {
				i.Environment = map[string]string{}
			}
			i.Environment[k] = v
		}
	}
	if c.Path != "" { // entrypoint and command, as run
		i.Command = append([]string{c.Path}, c.Args...)
	}
	for _, m := range c.Mounts {
		i.Volumes = append(i.Volumes, drivers.Volume{Source: m.Source, Target: m.Destination, ReadOnly: !m.RW})
	}
	if c.State != nil {
		i.State = stateOf(c.State.Status, c.State.ExitCode, c.State.OOMKilled)
		i.NativeState = string(c.State.Status)
		if c.State.Health != nil && c.State.Health.Status != "" {
			i.NativeState += " (" + string(c.State.Health.Status) + ")"
		}
		if c.State.Running {
			i.PID = c.State.Pid
		}
		if c.State.Status == container.StateExited || c.State.Status == container.StateDead {
			code := c.State.ExitCode
			i.ExitCode = &code
		}
		if t, err := time.Parse(time.RFC3339Nano, c.State.StartedAt); err == nil && t.Year() > 1 {
			i.StartedAt = t.UTC()
		}
	}
	if t, err := time.Parse(time.RFC3339Nano, c.Created); err == nil {
		i.Created = t.UTC()
	}
	if c.HostConfig != nil {
		i.Limits = limitsOf(c.HostConfig.Resources)
	}
	if c.NetworkSettings != nil {
		i.Networks = endpoints(c.NetworkSettings.Networks)
	}
	return i
}

func endpoints(m map[string]*network.EndpointSettings) []drivers.NetworkConfig {
	if len(m) == 0 {
		return nil
	}
	out := make([]drivers.NetworkConfig, 0, len(m))
	for name, ep := range m {
		nc := drivers.NetworkConfig{NetworkName: name}
		if ep != nil {
			if a := endpointAddr(ep); a.IsValid() {
				nc.IPAddress = a.String()
			}
			if ep.Gateway.IsValid() {
				nc.Gateway = ep.Gateway.String()
			}
		}
		out = append(out, nc)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].NetworkName < out[j].NetworkName })
	return out
}

// imageOf is the image an instance reports: for a managed container its
// template's base image (a snapshot restore or clone runs from a
// committed image derived from it), else the container's image.
func imageOf(labels map[string]string, actual string) string {
	if isManaged(labels) {
		if t, ok := templateFromLabels(labels); ok && t.BaseImage != "" {
			return t.BaseImage
		}
	}
	return actual
}

// Reconciliation is what Connect found among the managed containers.
type Reconciliation struct {
	// Adopted are managed containers (any host label) now known to this driver.
	Adopted []string
	// Leftovers are managed containers whose create did not finish (its
	// networks were never all connected): a create that timed out. A
	// retried create with the same request id completes them; otherwise
	// delete them.
	Leftovers []string
}

// Reconcile lists the managed containers: it adopts them (they are
// listed, watched and managed like ones this process created) and
// reports leftovers of creates that timed out half-way.
func (d *Driver) Reconcile(ctx context.Context) (Reconciliation, error) {
	c, err := d.client()
	if err != nil {
		return Reconciliation{}, err
	}
	res, err := c.ContainerList(ctx, client.ContainerListOptions{All: true, Filters: make(client.Filters).Add("label", LabelManaged+"=true")})
	if err != nil {
		return Reconciliation{}, fmt.Errorf("reconcile: list managed containers: %w", err)
	}
	var rep Reconciliation
	for _, s := range res.Items {
		name := containerName(s.Names...)
		rep.Adopted = append(rep.Adopted, name)
		if t, ok := templateFromLabels(s.Labels); ok && s.NetworkSettings != nil && missingNetworks(t, s.NetworkSettings.Networks) != nil {
			rep.Leftovers = append(rep.Leftovers, name)
		}
	}
	sort.Strings(rep.Adopted)
	sort.Strings(rep.Leftovers)
	return rep, nil
}

// LastReconciliation returns what the last Connect found.
func (d *Driver) LastReconciliation() Reconciliation {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.report
}

// missingNetworks returns the template networks a container is not on.
func missingNetworks(t drivers.InstanceTemplate, have map[string]*network.EndpointSettings) []drivers.NetworkConfig {
	var out []drivers.NetworkConfig
	for _, n := range t.Networks {
		if _, ok := have[n.NetworkName]; !ok {
			out = append(out, n)
		}
	}
	return out
}

// Health implements drivers.Driver: ping, engine and API versions,
// containers by state, image count, and as issues the daemon's warnings,
// leftovers of unfinished creates and snapshot images of instances that no
// longer exist.
func (d *Driver) Health(ctx context.Context) (drivers.Health, error) {
	c, err := d.client()
	if err != nil {
		return drivers.Health{}, err
	}
	if _, err := c.Ping(ctx, client.PingOptions{}); err != nil {
		return drivers.Health{}, fmt.Errorf("ping docker: %w", err)
	}
	info, err := c.Info(ctx, client.InfoOptions{})
	if err != nil {
		return drivers.Health{}, fmt.Errorf("docker info: %w", err)
	}
	list, err := d.List(ctx)
	if err != nil {
		return drivers.Health{}, err
	}
	in := info.Info
	h := drivers.Health{
		Healthy:    true,
		Version:    in.ServerVersion,
		APIVersion: c.ClientVersion(),
		Issues:     healthIssues(in.Warnings, d.LastReconciliation().Leftovers),
		Details: map[string]string{
			"host":                      c.DaemonHost(),
			"images":                    fmt.Sprint(in.Images),
			"containers":                fmt.Sprint(in.Containers),
			"storage_driver":            in.Driver,
			"cgroup_version":            in.CgroupVersion,
			"cgroup_driver":             in.CgroupDriver,
			"kernel":                    in.KernelVersion,
			"os":                        in.OperatingSystem,
			drivers.DetailHostCPUs:      fmt.Sprint(in.NCPU),
			drivers.DetailHostMemoryMiB: fmt.Sprint(in.MemTotal >> 20),
		},
	}
	h.CountStates(list)
	orphans, err := d.orphanSnapshots(ctx, list)
	if err != nil {
		return drivers.Health{}, err
	}
	h.Issues = append(h.Issues, orphans...)
	managed := 0
	for _, i := range list {
		if i.Managed {
			managed++
		}
	}
	h.Details["managed"] = fmt.Sprint(managed)
	return h, nil
}

// healthIssues are the daemon's warnings (each one issue, as the daemon
// words it, blank ones dropped) followed by one issue per leftover of an
// unfinished create.
func healthIssues(warnings, leftovers []string) []string {
	var issues []string
	for _, w := range warnings {
		if w = strings.TrimSpace(w); w != "" {
			issues = append(issues, w)
		}
	}
	for _, l := range leftovers {
		issues = append(issues, fmt.Sprintf("container %s: its create did not finish (networks missing); retry the create with the same request id or delete it", l))
	}
	return issues
}
