package docker

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"sort"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/client"

	"github.com/subbus/subbus/internal/drivers"
)

// cleanupTimeout bounds the removal of a half-made container after a
// failed create, which runs even when the caller's ctx has ended.
const cleanupTimeout = 30 * time.Second

// Create implements drivers.Driver. The template's first network is
// connected at create (API 1.41 accepts only one), the others after; a
// create that fails part-way removes the container again. A name
// conflict with a managed container made by the same request id (a retry
// of a create that timed out) completes and returns that container
// instead of failing, so retries never duplicate.
func (d *Driver) Create(ctx context.Context, t drivers.InstanceTemplate) (drivers.Instance, error) {
	if t.BaseImage == "" {
		return drivers.Instance{}, drivers.Errorf(drivers.InvalidArgument, "template %s: base_image is required", t.Name)
	}
	return d.createFrom(ctx, t, t.BaseImage, nil)
}

// createFrom creates a container configured by t from image (the
// template's own image, or a snapshot/clone image), with extra labels.
func (d *Driver) createFrom(ctx context.Context, t drivers.InstanceTemplate, image string, extra map[string]string) (drivers.Instance, error) {
	c, err := d.client()
	if err != nil {
		return drivers.Instance{}, err
	}
	reqID := drivers.RequestID(ctx)
	if err := d.ensureImage(ctx, image); err != nil {
		return drivers.Instance{}, err
	}
	if err := d.checkNetworks(ctx, t.Networks); err != nil {
		return drivers.Instance{}, fmt.Errorf("create %s: %w", t.Name, err)
	}
	opts, err := d.createOptions(t, image, reqID)
	if err != nil {
		return drivers.Instance{}, err
	}
	for k, v := range extra {
		opts.Config.Labels[k] = v
	}
	res, err := c.ContainerCreate(ctx, opts)
	if err != nil {
		if classify(err) == drivers.Conflict {
			return d.retriedCreate(ctx, t, reqID)
		}
		if classify(err) == drivers.NotFound && len(t.Networks) > 0 {
			return drivers.Instance{}, fmt.Errorf("create %s: network %q: %w", t.Name, t.Networks[0].NetworkName, err)
		}
		if ctx.Err() != nil {
			// The daemon may have created it after we gave up: remove
			// it if it is this very call's (its creation stamp matches).
			d.removeAbandoned(t.Name, opts.Config.Labels[LabelCreated])
		}
		return drivers.Instance{}, fmt.Errorf("create %s: %w", t.Name, err)
	}
	if err := d.connectNetworks(ctx, res.ID, t.Networks[min(1, len(t.Networks)):]); err != nil {
		d.removeHalfMade(res.ID)
		return drivers.Instance{}, fmt.Errorf("create %s: %w", t.Name, err)
	}
	ins, err := d.inspect(ctx, t.Name)
	if err != nil {
		return drivers.Instance{}, err
	}
	return d.fromInspect(ins), nil
}

// retriedCreate handles a name conflict at create.
func (d *Driver) retriedCreate(ctx context.Context, t drivers.InstanceTemplate, reqID string) (drivers.Instance, error) {
	taken := drivers.Errorf(drivers.AlreadyExists, "create %s: a container with that name already exists", t.Name)
	ins, err := d.inspect(ctx, t.Name)
	if err != nil || ins.Config == nil || reqID == "" {
		return drivers.Instance{}, taken
	}
	l := ins.Config.Labels
	if !isManaged(l) || l[LabelRequestID] != reqID {
		return drivers.Instance{}, taken
	}
	// The same request made it: finish what the first attempt may not have.
	var have map[string]*network.EndpointSettings
	if ins.NetworkSettings != nil {
		have = ins.NetworkSettings.Networks
	}
	if err := d.connectNetworks(ctx, ins.ID, missingNetworks(t, have)); err != nil {
		return drivers.Instance{}, fmt.Errorf("complete create %s: %w", t.Name, err)
	}
	if ins, err = d.inspect(ctx, t.Name); err != nil {
		return drivers.Instance{}, err
	}
	return d.fromInspect(ins), nil
}

func (d *Driver) removeHalfMade(id string) {
	c, err := d.client()
	if err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
	defer cancel()
	_, _ = c.ContainerRemove(ctx, id, client.ContainerRemoveOptions{Force: true, RemoveVolumes: true})
}

// removeAbandoned removes the container called name if this driver's
// create call stamped created made it, waiting (bounded) for the daemon
// to finish a create it may still be processing.
func (d *Driver) removeAbandoned(name, created string) {
	c, err := d.client()
	if err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
	defer cancel()
	for delay := 50 * time.Millisecond; ; delay = min(2*delay, time.Second) {
		res, err := c.ContainerInspect(ctx, name, client.ContainerInspectOptions{})
		if err == nil {
			if res.Container.Config != nil && res.Container.Config.Labels[LabelCreated] == created {
				_, _ = c.ContainerRemove(ctx, res.Container.ID, client.ContainerRemoveOptions{Force: true, RemoveVolumes: true})
			}
			return
		}
		if classify(err) != drivers.NotFound {
			return
		}
		// Not there (yet): the create may still be on its way.
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
		if delay >= time.Second {
			return
		}
	}
}

// ensureImage checks that image exists locally; it pulls it only when
// docker.allow_pull is set.
func (d *Driver) ensureImage(ctx context.Context, image string) error {
	c, err := d.client()
	if err != nil {
		return err
	}
	_, err = c.ImageInspect(ctx, image)
	if err == nil {
		return nil
	}
	if classify(err) != drivers.NotFound {
		return fmt.Errorf("inspect image %s: %w", image, err)
	}
	if !d.opts.AllowPull {
		return fmt.Errorf("image %q not found (pulling is disabled: set docker.allow_pull: true to allow it): %w", image, err)
	}
	rc, err := c.ImagePull(ctx, image, client.ImagePullOptions{})
	if err != nil {
		return fmt.Errorf("pull image %q: %w", image, err)
	}
	defer rc.Close()
	if _, err := io.Copy(io.Discard, rc); err != nil {
		return fmt.Errorf("pull image %s: %w", image, err)
	}
	if _, err := c.ImageInspect(ctx, image); err != nil {
		return drivers.Errorf(drivers.NotFound, "image %q not found after pull: %w", image, err)
	}
	return nil
}

// createOptions translates a template.
func (d *Driver) createOptions(t drivers.InstanceTemplate, image, reqID string) (client.ContainerCreateOptions, error) {
	labels, err := d.labelsFor(t, reqID)
	if err != nil {
		return client.ContainerCreateOptions{}, err
	}
	lim := t.Resources
	if lim.IsZero() {
		lim = d.opts.DefaultResources.limits()
	}
	res, err := resourcesOf(lim)
	if err != nil {
		return client.ContainerCreateOptions{}, err
	}
	env := make([]string, 0, len(t.Environment))
	for k, v := range t.Environment {
		env = append(env, k+"="+v)
	}
	sort.Strings(env)
	binds := make([]string, 0, len(t.Volumes))
	for _, v := range t.Volumes {
		if v.Source == "" || v.Target == "" {
			return client.ContainerCreateOptions{}, drivers.Errorf(drivers.InvalidArgument, "template %s: volume needs source and target", t.Name)
		}
		b := v.Source + ":" + v.Target
		if v.ReadOnly {
			b += ":ro"
		}
		binds = append(binds, b)
	}
	opts := client.ContainerCreateOptions{
		Name: t.Name,
		Config: &container.Config{
			Image:      image,
			Cmd:        t.Command,
			Env:        env,
			WorkingDir: t.WorkDir,
			User:       t.User,
			Labels:     labels,
		},
		HostConfig: &container.HostConfig{Binds: binds, Resources: res},
	}
	if len(t.Networks) > 0 {
		first := t.Networks[0]
		ep, err := endpointFor(first)
		if err != nil {
			return client.ContainerCreateOptions{}, err
		}
		opts.HostConfig.NetworkMode = container.NetworkMode(first.NetworkName)
		opts.NetworkingConfig = &network.NetworkingConfig{EndpointsConfig: map[string]*network.EndpointSettings{first.NetworkName: ep}}
		if len(first.DNSServers) > 0 {
			for _, s := range first.DNSServers {
				a, err := netip.ParseAddr(s)
				if err != nil {
					return client.ContainerCreateOptions{}, drivers.Errorf(drivers.InvalidArgument, "network %s: dns server %q: %w", first.NetworkName, s, err)
				}
				opts.HostConfig.DNS = append(opts.HostConfig.DNS, a)
			}
		}
	}
	return opts, nil
}

// endpointFor returns the endpoint settings of an attachment, with its
// static address if it has one.
func endpointFor(n drivers.NetworkConfig) (*network.EndpointSettings, error) {
	ep := &network.EndpointSettings{}
	if n.IPAddress != "" {
		a, err := parseAddr(n)
		if err != nil {
			return nil, err
		}
		ep.IPAMConfig = &network.EndpointIPAMConfig{}
		if a.Is4() {
			ep.IPAMConfig.IPv4Address = a
		} else {
			ep.IPAMConfig.IPv6Address = a
		}
	}
	return ep, nil
}

// connectNetworks connects container id to each network in turn; the
// caller has checked them (checkNetworks).
func (d *Driver) connectNetworks(ctx context.Context, id string, nets []drivers.NetworkConfig) error {
	c, err := d.client()
	if err != nil {
		return err
	}
	for _, n := range nets {
		ep, err := endpointFor(n)
		if err != nil {
			return err
		}
		if _, err := c.NetworkConnect(ctx, n.NetworkName, client.NetworkConnectOptions{Container: id, EndpointConfig: ep}); err != nil {
			return fmt.Errorf("connect network %s: %w", n.NetworkName, err)
		}
	}
	return nil
}
