package lxc

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"path"
	"regexp"
	"strings"
	"time"

	"github.com/subbus/subbus/internal/drivers"
)

// createBody is POST /1.0/instances.
type createBody struct {
	Name     string                       `json:"name"`
	Type     string                       `json:"type"`
	Source   source                       `json:"source"`
	Profiles []string                     `json:"profiles,omitempty"`
	Config   map[string]string            `json:"config,omitempty"`
	Devices  map[string]map[string]string `json:"devices,omitempty"`
	// Start is Incus's (and newer LXD's) start-on-create; Create never
	// starts, and LXD 5.0 ignores the field, so it is sent as false only
	// to servers that know it.
	Start *bool `json:"start,omitempty"`
}

type source struct {
	Type         string `json:"type"` // image, copy
	Alias        string `json:"alias,omitempty"`
	Fingerprint  string `json:"fingerprint,omitempty"`
	Source       string `json:"source,omitempty"` // copy: the source instance
	InstanceOnly bool   `json:"instance_only,omitempty"`
}

var hexPattern = regexp.MustCompile(`^[0-9a-f]{8,64}$`)

// resolveImage finds a local image by alias, then by (partial)
// fingerprint. A missing image is NotFound naming it.
func (d *Driver) resolveImage(ctx context.Context, c *client, image string) (source, error) {
	if image == "" {
		image = d.opts.DefaultImage
	}
	if image == "" {
		return source{}, drivers.Errorf(drivers.InvalidArgument, "lxc: base_image: no image given and no lxc.default_image configured")
	}
	if strings.Contains(image, ":") {
		return source{}, drivers.Errorf(drivers.NotFound, "lxc: image %q: remote images are not supported, import it locally", image)
	}
	var alias struct {
		Target string `json:"target"`
	}
	_, err := c.query(ctx, http.MethodGet, "/1.0/images/aliases/"+esc(image), nil, &alias)
	if err == nil {
		return source{Type: "image", Alias: image}, nil
	}
	if classify(err) != drivers.NotFound {
		return source{}, err
	}
	if hexPattern.MatchString(image) {
		var img struct {
			Fingerprint string `json:"fingerprint"`
		}
		if _, err := c.query(ctx, http.MethodGet, "/1.0/images/"+esc(image), nil, &img); err == nil && img.Fingerprint != "" {
			return source{Type: "image", Fingerprint: img.Fingerprint}, nil
		} else if err != nil && classify(err) != drivers.NotFound {
			return source{}, err
		}
	}
	return source{}, drivers.Errorf(drivers.NotFound, "lxc: image %q not found (no such local alias or fingerprint)", image)
}

// createRequest builds the body of a create from a template.
func (d *Driver) createRequest(t drivers.InstanceTemplate, src source, srv *server) (createBody, error) {
	switch {
	case len(t.Command) > 0:
		return createBody{}, drivers.Unsupportedf("lxc: command: a system container runs its image's init; use exec for commands")
	case t.WorkDir != "":
		return createBody{}, drivers.Unsupportedf("lxc: workdir: a system container has no working directory (exec takes one)")
	case t.User != "":
		return createBody{}, drivers.Unsupportedf("lxc: user: a system container's init runs as root (exec takes a user)")
	}
	b := createBody{
		Name:    t.Name,
		Type:    "container",
		Source:  src,
		Config:  map[string]string{keyManaged: "true"},
		Devices: map[string]map[string]string{},
	}
	if d.opts.DefaultProfile != "" {
		b.Profiles = []string{d.opts.DefaultProfile}
	}
	if srv != nil && (srv.isIncus() || srv.has("instance_create_start")) {
		f := false
		b.Start = &f
	}
	if src.Alias != "" {
		b.Config[keyImage] = src.Alias
	} else if src.Fingerprint != "" {
		b.Config[keyImage] = src.Fingerprint
	}
	lim, err := limitsConfig(t.Resources)
	if err != nil {
		return createBody{}, err
	}
	for k, v := range lim {
		if v != "" {
			b.Config[k] = v
		}
	}
	for k, v := range t.Environment {
		b.Config["environment."+k] = v
	}
	for k, v := range t.Metadata {
		if strings.HasPrefix(userPrefix+k, subbusPref) {
			return createBody{}, drivers.Errorf(drivers.InvalidArgument, "lxc: metadata: key %q is reserved", k)
		}
		b.Config[userPrefix+k] = v
	}
	for i, v := range t.Volumes {
		dev := map[string]string{"type": "disk", "path": v.Target, "source": v.Source}
		if !path.IsAbs(v.Source) {
			// A custom storage volume rather than a host path.
			dev["pool"] = d.opts.StoragePool
		}
		if v.ReadOnly {
			dev["readonly"] = "true"
		}
		b.Devices[fmt.Sprintf("vol%d", i)] = dev
	}
	for i, n := range t.Networks {
		dev := nicDevice(n, fmt.Sprintf("eth%d", i))
		b.Devices[n.NetworkName] = dev
	}
	return b, nil
}

// nicDevice is a NIC on a managed network with the given interface name.
func nicDevice(n drivers.NetworkConfig, iface string) map[string]string {
	dev := map[string]string{"type": "nic", "network": n.NetworkName, "name": iface}
	if n.IPAddress != "" {
		if strings.Contains(n.IPAddress, ":") {
			dev["ipv6.address"] = n.IPAddress
		} else {
			dev["ipv4.address"] = n.IPAddress
		}
	}
	return dev
}

// Create creates a stopped container. If ctx ends before the server has
// finished, Create returns Timeout and removes the instance in the
// background once the server's operation is over, so nothing half-made
// stays behind.
func (d *Driver) Create(ctx context.Context, t drivers.InstanceTemplate) (drivers.Instance, error) {
	if t.BaseImage == "" && d.opts.DefaultImage == "" {
		return drivers.Instance{}, drivers.Errorf(drivers.InvalidArgument, "lxc: base_image: no image given and no lxc.default_image configured")
	}
	c, srv, err := d.conn()
	if err != nil {
		return drivers.Instance{}, err
	}
	if _, _, err := d.get(ctx, t.Name); err == nil {
		return drivers.Instance{}, drivers.Errorf(drivers.AlreadyExists, "lxc: instance %q already exists", t.Name)
	} else if classify(err) != drivers.NotFound {
		return drivers.Instance{}, err
	}
	src, err := d.resolveImage(ctx, c, t.BaseImage)
	if err != nil {
		return drivers.Instance{}, err
	}
	body, err := d.createRequest(t, src, srv)
	if err != nil {
		return drivers.Instance{}, err
	}
	if err := d.runCreate(ctx, c, body); err != nil {
		return drivers.Instance{}, err
	}
	return d.Get(ctx, t.Name)
}

// runCreate posts a create (from an image or a copy) and waits for it.
// When ctx ends first, the operation is left to finish and the instance
// it made is deleted in the background.
func (d *Driver) runCreate(ctx context.Context, c *client, body createBody) error {
	op, err := c.start(ctx, http.MethodPost, "/1.0/instances", body, nil)
	if err != nil {
		if ctx.Err() != nil {
			// The request may have reached the server: look for an
			// instance to remove once things settle.
			d.abandon(c, nil, body.Name)
		}
		return err
	}
	if _, err := c.wait(ctx, op); err != nil {
		if ctx.Err() != nil {
			d.abandon(c, op, body.Name)
		}
		return err
	}
	return nil
}

// abandon removes, in the background, an instance whose create the caller
// gave up on: it waits (bounded) for the operation, then force-deletes.
func (d *Driver) abandon(c *client, op *operation, name string) {
	d.bg.Add(1)
	go func() {
		defer d.bg.Done()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if op != nil && op.ID != "" {
			if _, err := c.wait(ctx, op); err != nil {
				var oe *opError
				if errors.As(err, &oe) {
					return // the create failed: nothing was made
				}
			}
		} else {
			time.Sleep(2 * time.Second)
		}
		for i := 0; i < 20; i++ {
			_, err := d.Delete(ctx, name, drivers.DeleteOptions{Force: true})
			if err == nil || ctx.Err() != nil {
				return
			}
			time.Sleep(500 * time.Millisecond)
		}
	}()
}

// stateBody is PUT /1.0/instances/<name>/state. Timeout is a pointer so
// that Go's zero value is never sent by accident: LXD reads an explicit
// 0 as "kill now" and an absent timeout as "wait forever".
type stateBody struct {
	Action   string `json:"action"`
	Timeout  *int   `json:"timeout,omitempty"`
	Force    bool   `json:"force"`
	Stateful bool   `json:"stateful"`
}

// changeState runs a state action and waits for it.
func (d *Driver) changeState(ctx context.Context, name string, body stateBody) error {
	c, _, err := d.conn()
	if err != nil {
		return err
	}
	_, err = c.async(ctx, http.MethodPut, "/1.0/instances/"+esc(name)+"/state", body, nil)
	return err
}

// Start starts a stopped (or unfreezes a frozen) instance.
func (d *Driver) Start(ctx context.Context, name string) (bool, error) {
	in, _, err := d.get(ctx, name)
	if err != nil {
		return false, err
	}
	switch normState(in.StatusCode, in.Status) {
	case drivers.StateRunning, drivers.StateStarting:
		return false, nil
	case drivers.StatePaused:
		return true, d.changeState(ctx, name, stateBody{Action: "unfreeze"})
	}
	err = d.changeState(ctx, name, stateBody{Action: "start"})
	if err != nil && strings.Contains(strings.ToLower(err.Error()), "already running") {
		return false, nil
	}
	return err == nil, err
}

// gracefulSeconds is the timeout sent for a graceful stop: opts.Timeout
// rounded up to whole seconds (at least 1, never 0), shortened so that a
// kill still fits before ctx's deadline.
func gracefulSeconds(ctx context.Context, timeout time.Duration) int {
	secs := int(math.Ceil(timeout.Seconds()))
	if dl, ok := ctx.Deadline(); ok {
		left := int(time.Until(dl).Seconds()) - 3
		if left < secs {
			secs = left
		}
	}
	return max(secs, 1)
}

// stopBody is the request for a stop (or restart) with opts: force sends
// force:true and no timeout; graceful sends a timeout of at least 1s.
func stopBody(ctx context.Context, action string, opts drivers.StopOptions) (stateBody, error) {
	if opts.Force {
		return stateBody{Action: action, Force: true}, nil
	}
	if opts.Timeout <= 0 {
		return stateBody{}, drivers.Errorf(drivers.InvalidArgument, "lxc: stop: a graceful stop needs a timeout > 0")
	}
	secs := gracefulSeconds(ctx, opts.Timeout)
	return stateBody{Action: action, Timeout: &secs}, nil
}

// Stop stops an instance: with Force at once; otherwise it asks init to
// shut down (SIGPWR) and, when that has not worked within opts.Timeout,
// kills it — LXD itself only reports the failed shutdown.
func (d *Driver) Stop(ctx context.Context, name string, opts drivers.StopOptions) (bool, error) {
	in, _, err := d.get(ctx, name)
	if err != nil {
		return false, err
	}
	if normState(in.StatusCode, in.Status) == drivers.StateStopped {
		return false, nil
	}
	body, err := stopBody(ctx, "stop", opts)
	if err != nil {
		return false, err
	}
	err = d.changeState(ctx, name, body)
	if err == nil || opts.Force || ctx.Err() != nil {
		return err == nil, d.stopResult(err)
	}
	// The graceful stop failed (init ignored the signal): kill it.
	if ferr := d.changeState(ctx, name, stateBody{Action: "stop", Force: true}); ferr != nil {
		return false, d.stopResult(ferr)
	}
	return true, nil
}

// stopResult forgives stopping what has already stopped.
func (d *Driver) stopResult(err error) error {
	if err != nil && strings.Contains(strings.ToLower(err.Error()), "already stopped") {
		return nil
	}
	return err
}

// Restart restarts natively (one lifecycle event, instance-restarted). A
// graceful restart that init ignores is done as kill, then start. A
// stopped instance is just started.
func (d *Driver) Restart(ctx context.Context, name string, opts drivers.StopOptions) error {
	in, _, err := d.get(ctx, name)
	if err != nil {
		return err
	}
	if normState(in.StatusCode, in.Status) != drivers.StateRunning {
		_, err := d.Start(ctx, name)
		return err
	}
	body, err := stopBody(ctx, "restart", opts)
	if err != nil {
		return err
	}
	err = d.changeState(ctx, name, body)
	if err == nil || opts.Force || ctx.Err() != nil {
		return err
	}
	if ferr := d.changeState(ctx, name, stateBody{Action: "restart", Force: true}); ferr != nil {
		return ferr
	}
	return nil
}

// Delete removes an instance; Force kills a running one first and
// forgives a missing one.
func (d *Driver) Delete(ctx context.Context, name string, opts drivers.DeleteOptions) (bool, error) {
	c, _, err := d.conn()
	if err != nil {
		return false, err
	}
	in, _, err := d.get(ctx, name)
	if err != nil {
		if opts.Force && classify(err) == drivers.NotFound {
			return false, nil
		}
		return false, err
	}
	if st := normState(in.StatusCode, in.Status); st != drivers.StateStopped {
		if !opts.Force {
			return false, drivers.Errorf(drivers.Conflict, "lxc: instance %q is %s; stop it first or delete with force", name, st)
		}
		if err := d.changeState(ctx, name, stateBody{Action: "stop", Force: true}); err != nil && classify(err) != drivers.Conflict {
			return false, err
		}
	}
	_, err = c.async(ctx, http.MethodDelete, "/1.0/instances/"+esc(name), nil, nil)
	if err != nil {
		if opts.Force && classify(err) == drivers.NotFound {
			return false, nil
		}
		return false, err
	}
	d.metricsMu.Lock()
	delete(d.prev, name)
	d.metricsMu.Unlock()
	d.consoleMu.Lock()
	delete(d.consoles, name)
	d.consoleMu.Unlock()
	return true, nil
}
