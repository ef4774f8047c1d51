package manager

import (
	"context"
	"fmt"
	"slices"

	"github.com/subbus/subbus/internal/drivers"
)

// subject is what a driver call is about, for the message of its error.
type subject struct {
	instance string // the instance the request names; "" for list, health, connect
	snapshot string // snapshot-create/restore/delete
	network  string // network-attach/detach
	target   string // clone: the new instance
	// template: create (the image and networks that may be missing).
	template *drivers.InstanceTemplate
}

// shape gives an error of a driver call its message: one shape per code,
// built from the code's phrase (drivers.CodeTable) and what the call is
// about. not_found and already_exists read `<object> <phrase>`
// (`instance "web" not found`, `snapshot "s1" of instance "web" already
// exists`), every other code `<op> <instance>: <phrase>` (`start instance
// "web": timed out`). The driver's own text is kept as the Detail
// (dropped when it says the same); the code and the whole chain (native
// cause, sentinel) are kept.
func (m *Manager) shape(ctx context.Context, c driverCall, err error) error {
	if err == nil {
		return nil
	}
	code := drivers.CodeOf(err)
	phrase := code.Phrase()
	if phrase == "" {
		return err
	}
	if code == drivers.Unavailable {
		phrase = m.d.Name() + " " + phrase // which substrate
	}
	about := m.about(ctx, c, code)
	var msg string
	switch {
	case about != "" && (code == drivers.NotFound || code == drivers.AlreadyExists):
		msg = about + " " + phrase
	case about != "":
		msg = c.op + " " + about + ": " + phrase
	default:
		msg = c.op + ": " + phrase
	}
	detail := err.Error()
	if detail == msg {
		return err // the driver said it in the same words
	}
	return &drivers.Error{Code: code, Message: msg, Detail: detail, Err: err}
}

// about names what an error of c is about: the instance, or, for
// not_found and already_exists, the object that is missing or taken. When
// a not_found may be about the instance or a second object (a snapshot, a
// network, create's image or networks), it asks the driver which one is
// missing (bounded by ConnectionTimeout, on the error path only).
func (m *Manager) about(ctx context.Context, c driverCall, code drivers.Code) string {
	s := c.subj
	inst := func(n string) string { return fmt.Sprintf("instance %q", n) }
	if s.instance == "" {
		return ""
	}
	switch code {
	case drivers.AlreadyExists:
		switch {
		case s.target != "":
			return inst(s.target)
		case s.snapshot != "":
			return fmt.Sprintf("snapshot %q of instance %q", s.snapshot, s.instance)
		case s.network != "":
			return fmt.Sprintf("network %q of instance %q", s.network, s.instance)
		}
	case drivers.NotFound:
		switch {
		case s.template != nil:
			return m.missingFromTemplate(ctx, *s.template)
		case c.op == "snapshot-create" || s.target != "":
			return inst(s.instance)
		case (s.snapshot != "" || s.network != "") && m.exists(ctx, s.instance):
			if s.snapshot != "" {
				return fmt.Sprintf("snapshot %q of instance %q", s.snapshot, s.instance)
			}
			return fmt.Sprintf("network %q of instance %q", s.network, s.instance)
		}
	}
	return inst(s.instance)
}

// exists reports whether the driver says the instance exists (true when
// it cannot tell: the error then names the instance only when it is
// known to be missing).
func (m *Manager) exists(ctx context.Context, name string) bool {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), m.opts.ConnectionTimeout)
	defer cancel()
	_, err := guard(m, ctx, "get", func(ctx context.Context) (drivers.Instance, error) { return m.d.Get(ctx, name) })
	return drivers.Classify(m.d, err) != drivers.NotFound
}

// missingFromTemplate names what a create's not_found is about: a network
// of the template the driver does not list, else the image.
func (m *Manager) missingFromTemplate(ctx context.Context, t drivers.InstanceTemplate) string {
	if n, ok := m.d.(drivers.Networker); ok && m.caps.Networks && len(t.Networks) > 0 {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), m.opts.ConnectionTimeout)
		defer cancel()
		list, err := guard(m, ctx, "network-list", n.ListNetworks)
		if err == nil {
			for _, want := range t.Networks {
				if !slices.ContainsFunc(list, func(x drivers.Network) bool { return x.Name == want.NetworkName }) {
					return fmt.Sprintf("network %q", want.NetworkName)
				}
			}
		}
	}
	if t.BaseImage == "" {
		return fmt.Sprintf("the image or command of instance %q", t.Name)
	}
	return fmt.Sprintf("image %q", t.BaseImage)
}
