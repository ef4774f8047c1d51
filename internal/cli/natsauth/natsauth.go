// Package natsauth generates the NATS permission model of a subbus fleet:
// one nkey identity per worker host, client identities with scopes, event
// readers, a JetStream admin and a system user, and the nats-server
// configuration (an accounts block to include) that gives each exactly the
// subjects it needs. `subbus admin creds` writes it; the shipped
// deployments/nats/accounts.conf is its output for the sample fleet.
//
// Why server-configured nkey users rather than decentralized JWTs: the
// whole policy is one reviewable file that nats-server reads as is (the
// tests load the shipped file into a real server), it needs no operator,
// resolver or nsc tooling, the server holds only public keys, and
// changing it is `nats-server --signal reload`. docs/security.md explains
// the model and lists the test proving each rule.
package natsauth

import (
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/nats-io/nkeys"

	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/messages"
)

// Role is what an identity may do.
type Role string

// The roles.
const (
	// RoleWorker serves one host: its own host subjects, the pooled
	// subjects of the cluster-wide drivers, events/metrics/progress/
	// inventory under its own host token, replies only to what it received.
	RoleWorker Role = "worker"
	// RoleOperator sends every op (within its driver/host scope) and reads
	// the streams.
	RoleOperator Role = "operator"
	// RoleReader sends only the read-only ops (ReadOnlyOps) and reads the
	// streams.
	RoleReader Role = "reader"
	// RoleEvents reads the streams only, with ordered consumers and its
	// own durable consumer (named after the identity).
	RoleEvents Role = "events"
	// RoleAdmin uses the whole JetStream API: creates the streams and KV
	// buckets (the workers run with manage_streams: false).
	RoleAdmin Role = "admin"
	// RoleSystem is the system account's user (server monitoring).
	RoleSystem Role = "system"
)

// Stream and bucket names the model knows. The KV buckets are those of
// the fleet features (inventory, worker heartbeats, leases of cluster-wide
// instances): their subjects are permitted here so that the model holds
// when they land.
const (
	InventoryBucket = "SUBSTRATE_INVENTORY" // keys <driver>.<host>.<instance>
	WorkersBucket   = "SUBSTRATE_WORKERS"   // keys <host> (heartbeats)
	LeasesBucket    = "SUBSTRATE_LEASES"    // keys <driver>.<instance> (cluster-wide drivers)
	OpsBucket       = messages.OpsBucket    // keys <driver>.<host>.<op-id> (long operations)
	// OpsToken is the progress tree: substrate.ops.<driver>.<host>.<op-id>.
	OpsToken = messages.OpsToken
)

// ReadOnlyOps are the ops a reader may send: every op that changes
// nothing (messages.Op.Mutating), except logs, whose output can carry
// secrets.
func ReadOnlyOps() []messages.Op {
	var out []messages.Op
	for _, op := range messages.Ops() {
		if !op.Mutating() && op != messages.OpLogs {
			out = append(out, op)
		}
	}
	return out
}

// Identity is one NATS user.
type Identity struct {
	Name string
	Role Role
	// Host is a worker's host token.
	Host string
	// Drivers and Hosts narrow an operator's or reader's requests; empty
	// means every driver / every host (and the pooled subjects, which name
	// no host, only when Hosts is empty).
	Drivers []string
	Hosts   []string
	// Public is the nkey public key (U…); Seed its seed (SU…).
	Public string
	Seed   []byte
}

// InboxPrefix is the identity's private inbox prefix: it may subscribe
// only below it, so no one else reads its replies.
func (i Identity) InboxPrefix() string { return "_INBOX_" + i.Name }

// EnvVar is the environment variable the env-keys form of the
// configuration reads the identity's public key from.
func (i Identity) EnvVar() string {
	return "SUBBUS_NKEY_" + strings.ToUpper(strings.NewReplacer("-", "_").Replace(i.Name))
}

// Fleet is what to generate for.
type Fleet struct {
	// Account holds every identity but the system user (default SUBBUS).
	Account string
	// Hosts get one worker identity each, named worker-<host>.
	Hosts []string
	// ClusterDrivers are the drivers served on the pooled subjects
	// substrate.<driver>.<op> (cluster-wide substrates such as proxmox):
	// workers may join their queue group. Other drivers are reached
	// through their host's subjects only.
	ClusterDrivers []string
	// Clients are the other identities (no Public/Seed needed). nil:
	// DefaultClients.
	Clients []Identity
	// StreamFor bounds how long a worker may keep replying to one request
	// (streamed exec output, followed logs): allow_responses expiry
	// (default 1h).
	StreamFor time.Duration
}

// DefaultClients are the client identities generated when none are given.
func DefaultClients() []Identity {
	return []Identity{
		{Name: "admin", Role: RoleAdmin},
		{Name: "operator", Role: RoleOperator},
		{Name: "reader", Role: RoleReader},
		{Name: "events", Role: RoleEvents},
	}
}

// Identities validates f and returns every identity, workers first (in
// host order), then the clients, then the system user "sys", each with a
// fresh nkey unless it came with one.
func (f Fleet) Identities() ([]Identity, error) {
	if len(f.Hosts) == 0 {
		return nil, fmt.Errorf("hosts: at least one worker host is needed")
	}
	var ids []Identity
	for _, h := range f.Hosts {
		if !messages.ValidToken(h) {
			return nil, fmt.Errorf("host %q: not a subject token (letters, digits, '-', '_')", h)
		}
		ids = append(ids, Identity{Name: "worker-" + h, Role: RoleWorker, Host: h})
	}
	for _, d := range f.ClusterDrivers {
		if !validToken(d) {
			return nil, fmt.Errorf("cluster driver %q: not a driver name", d)
		}
	}
	clients := f.Clients
	if clients == nil {
		clients = DefaultClients()
	}
	for _, c := range clients {
		switch c.Role {
		case RoleOperator, RoleReader, RoleEvents, RoleAdmin:
		default:
			return nil, fmt.Errorf("client %q: role %q is not operator, reader, events or admin", c.Name, c.Role)
		}
		if (len(c.Drivers) > 0 || len(c.Hosts) > 0) && c.Role != RoleOperator && c.Role != RoleReader {
			return nil, fmt.Errorf("client %q: only operator and reader identities take driver or host scopes", c.Name)
		}
		for _, d := range c.Drivers {
			if !validToken(d) {
				return nil, fmt.Errorf("client %q: %q is not a driver name", c.Name, d)
			}
		}
		for _, h := range c.Hosts {
			if !messages.ValidToken(h) {
				return nil, fmt.Errorf("client %q: host %q is not a subject token", c.Name, h)
			}
		}
		ids = append(ids, c)
	}
	ids = append(ids, Identity{Name: "sys", Role: RoleSystem})
	seen := map[string]bool{}
	for i := range ids {
		id := &ids[i]
		if !messages.ValidToken(id.Name) || strings.HasPrefix(id.Name, "_") {
			return nil, fmt.Errorf("identity %q: the name must be a subject token", id.Name)
		}
		if seen[id.Name] {
			return nil, fmt.Errorf("identity %q: named twice", id.Name)
		}
		seen[id.Name] = true
		if id.Public != "" {
			continue
		}
		kp, err := nkeys.CreateUser()
		if err != nil {
			return nil, err
		}
		if id.Public, err = kp.PublicKey(); err != nil {
			return nil, err
		}
		if id.Seed, err = kp.Seed(); err != nil {
			return nil, err
		}
	}
	return ids, nil
}

// validToken: a driver name (drivers.ValidDriverName), and not the
// progress tree either.
func validToken(s string) bool {
	return drivers.ValidDriverName(s) == nil && s != OpsToken
}

// Permissions are one user's permissions, as nats-server reads them.
type Permissions struct {
	PubAllow, PubDeny, SubAllow, SubDeny []string
	// Responses: the user may publish to the reply subject of a message it
	// received (allow_responses). MaxResponses < 0: any number of times
	// within ResponsesFor.
	Responses    bool
	MaxResponses int
	ResponsesFor time.Duration
}

const (
	root    = messages.SubjectRoot
	jsAPI   = "$JS.API"
	events  = messages.EventsStream
	metrics = messages.MetricsStream
)

// discovery are the micro $SRV subjects of the substrate service.
var discovery = []string{"$SRV.*", "$SRV.*." + messages.ServiceName, "$SRV.*." + messages.ServiceName + ".*"}

// Permissions returns id's permissions in f. all is every identity of the
// fleet (for the durable consumer names of event readers, which no one
// else may touch).
func (f Fleet) Permissions(id Identity, all []Identity) Permissions {
	var p Permissions
	switch id.Role {
	case RoleWorker:
		h := id.Host
		p.SubAllow = append(p.SubAllow, root+".*."+h+".*")
		for _, d := range f.ClusterDrivers {
			// Queue subscriptions only: a worker gets its share of pooled
			// requests, never a copy of all of them.
			p.SubAllow = append(p.SubAllow, root+"."+d+".* "+queueGroup)
		}
		p.SubAllow = append(p.SubAllow, discovery...)
		p.SubAllow = append(p.SubAllow, id.InboxPrefix()+".>")
		p.PubAllow = []string{
			root + "." + messages.EventsToken + ".*." + h + ".>",
			root + "." + messages.MetricsToken + ".*." + h + ".>",
			root + "." + OpsToken + ".*." + h + ".>",
			jsAPI + ".STREAM.INFO." + events,
			jsAPI + ".STREAM.INFO." + metrics,
			"$KV." + InventoryBucket + ".*." + h + ".>",
			jsAPI + ".DIRECT.GET.KV_" + InventoryBucket + ".$KV." + InventoryBucket + ".*." + h + ".>",
			jsAPI + ".STREAM.INFO.KV_" + InventoryBucket,
			// The resync lists the worker's own keys with an ordered
			// consumer filtered on its host (and deletes it when done).
			jsAPI + ".CONSUMER.CREATE.KV_" + InventoryBucket + ".*.$KV." + InventoryBucket + ".*." + h + ".>",
			jsAPI + ".CONSUMER.DELETE.KV_" + InventoryBucket + ".*",
			"$KV." + WorkersBucket + "." + h,
			jsAPI + ".STREAM.INFO.KV_" + WorkersBucket,
			// Long operations: its own records (write, read, and list them
			// at start to mark the ones it lost).
			"$KV." + OpsBucket + ".*." + h + ".>",
			jsAPI + ".DIRECT.GET.KV_" + OpsBucket + ".$KV." + OpsBucket + ".*." + h + ".>",
			jsAPI + ".STREAM.INFO.KV_" + OpsBucket,
			jsAPI + ".CONSUMER.CREATE.KV_" + OpsBucket + ".*.$KV." + OpsBucket + ".*." + h + ".>",
			jsAPI + ".CONSUMER.DELETE.KV_" + OpsBucket + ".*",
		}
		if len(f.ClusterDrivers) > 0 {
			p.PubAllow = append(p.PubAllow, jsAPI+".STREAM.INFO.KV_"+LeasesBucket)
			for _, d := range f.ClusterDrivers {
				p.PubAllow = append(p.PubAllow, "$KV."+LeasesBucket+"."+d+".>",
					jsAPI+".DIRECT.GET.KV_"+LeasesBucket+".$KV."+LeasesBucket+"."+d+".>")
			}
		}
		p.Responses, p.MaxResponses, p.ResponsesFor = true, -1, f.streamFor()
	case RoleOperator, RoleReader:
		p.PubAllow = append(requestSubjects(id), discovery...)
		p.PubAllow = append(p.PubAllow, streamReading()...)
		p.PubAllow = append(p.PubAllow, inventoryReading()...)
		p.PubDeny = treesDeny()
		p.PubDeny = append(p.PubDeny, durableDeny(id, all)...)
		p.SubAllow = []string{id.InboxPrefix() + ".>"}
		hosts := id.Hosts
		if len(hosts) == 0 {
			hosts = []string{"*"}
		}
		for _, h := range hosts {
			p.SubAllow = append(p.SubAllow, root+"."+OpsToken+".*."+h+".>")
		}
		// Acknowledging streamed chunks is replying to the worker.
		p.Responses, p.MaxResponses = true, 1
	case RoleEvents:
		p.PubAllow = append(streamReading(), durable(id.Name)...)
		p.PubDeny = append(treesDeny(), durableDeny(id, all)...)
		p.SubAllow = []string{id.InboxPrefix() + ".>"}
		p.Responses, p.MaxResponses = true, 1
	case RoleAdmin:
		p.PubAllow = append([]string{jsAPI + ".>"}, discovery...)
		p.PubDeny = treesDeny()
		p.SubAllow = []string{id.InboxPrefix() + ".>"}
	}
	return p
}

// queueGroup is the workers' queue group (worker.QueueGroup).
const queueGroup = "substrate"

func (f Fleet) streamFor() time.Duration {
	if f.StreamFor > 0 {
		return f.StreamFor
	}
	return time.Hour
}

// requestSubjects are the request subjects id may publish to.
func requestSubjects(id Identity) []string {
	drivers := id.Drivers
	if len(drivers) == 0 {
		drivers = []string{"*"}
	}
	ops := []string{"*"}
	if id.Role == RoleReader {
		ops = nil
		for _, op := range ReadOnlyOps() {
			ops = append(ops, string(op))
		}
	}
	var out []string
	for _, d := range drivers {
		for _, op := range ops {
			if len(id.Hosts) == 0 {
				out = append(out, root+"."+d+"."+op, root+"."+d+".*."+op)
				continue
			}
			for _, h := range id.Hosts {
				out = append(out, root+"."+d+"."+h+"."+op)
			}
		}
	}
	return out
}

// streamReading lets a client read both streams with ordered (ephemeral,
// randomly named) consumers: create, fetch, info; never delete, list or
// acknowledge, and never publish into the streams.
func streamReading() []string {
	var out []string
	for _, s := range []string{events, metrics} {
		out = append(out,
			jsAPI+".STREAM.INFO."+s,
			jsAPI+".CONSUMER.CREATE."+s+".*",
			jsAPI+".CONSUMER.CREATE."+s+".*.>",
			jsAPI+".CONSUMER.MSG.NEXT."+s+".*",
			jsAPI+".CONSUMER.INFO."+s+".*",
		)
	}
	return out
}

// inventoryReading lets a client read the inventory and the operation
// records: direct gets (by key, and batched: the owner lookup of
// docs/fleet.md) and ordered consumers (list, watch).
func inventoryReading() []string {
	var out []string
	for _, name := range []string{InventoryBucket, OpsBucket} {
		b := "KV_" + name
		out = append(out, jsAPI+".STREAM.INFO."+b, jsAPI+".DIRECT.GET."+b, jsAPI+".DIRECT.GET."+b+".>",
			jsAPI+".CONSUMER.CREATE."+b+".*", jsAPI+".CONSUMER.CREATE."+b+".*.>")
	}
	return out
}

// durable is what an event reader may do with its own durable consumer
// on the events stream: create/update, fetch, acknowledge, delete.
func durable(name string) []string {
	return []string{
		jsAPI + ".CONSUMER.CREATE." + events + "." + name,
		jsAPI + ".CONSUMER.CREATE." + events + "." + name + ".>",
		jsAPI + ".CONSUMER.DURABLE.CREATE." + events + "." + name,
		jsAPI + ".CONSUMER.MSG.NEXT." + events + "." + name,
		jsAPI + ".CONSUMER.INFO." + events + "." + name,
		jsAPI + ".CONSUMER.DELETE." + events + "." + name,
		"$JS.ACK." + events + "." + name + ".>",
	}
}

// durableDeny keeps id away from every other event reader's durable
// consumer (its name is known; ordered consumers' names are random).
func durableDeny(id Identity, all []Identity) []string {
	var out []string
	for _, o := range all {
		if o.Role != RoleEvents || o.Name == id.Name {
			continue
		}
		for _, s := range []string{events, metrics} {
			out = append(out,
				jsAPI+".CONSUMER.*."+s+"."+o.Name,
				jsAPI+".CONSUMER.*."+s+"."+o.Name+".>",
				jsAPI+".CONSUMER.*.*."+s+"."+o.Name)
		}
	}
	return out
}

// treesDeny: no client publishes into the event, metric or progress trees
// (forged events), whatever else its allow list matches.
func treesDeny() []string {
	return []string{root + "." + messages.EventsToken + ".>", root + "." + messages.MetricsToken + ".>", root + "." + OpsToken + ".>"}
}

// Header is the comment Config output starts with; envKeys says the
// keys are environment references.
func (f Fleet) Header(envKeys bool) string {
	h := "subbus fleet permissions, generated by `subbus admin creds`; see docs/security.md.\n" +
		"Hosts: " + strings.Join(f.Hosts, ",") + "; cluster-wide drivers: " + orNone(f.ClusterDrivers) + "."
	if envKeys {
		h += "\nEach nkey is read from the environment variable named (nats-server resolves\n" +
			"unquoted $NAMES from the environment); nkeys.env holds the generated values."
	}
	return h
}

func orNone(l []string) string {
	if len(l) == 0 {
		return "none"
	}
	return strings.Join(l, ",")
}

// EnvKey and PublicKey are the two forms of a user's nkey in Config.
func EnvKey(id Identity) string    { return "$" + id.EnvVar() }
func PublicKey(id Identity) string { return id.Public }

// Config returns the nats-server configuration of the fleet: an accounts
// block (Account with JetStream, SYS) and system_account, to include from
// each node's configuration. key returns what to write as each user's
// nkey: the public key, or an unquoted $VARIABLE that nats-server reads
// from the environment (ids' EnvVar).
func (f Fleet) Config(ids []Identity, key func(Identity) string, header string) []byte {
	acct := f.Account
	if acct == "" {
		acct = "SUBBUS"
	}
	var b strings.Builder
	for _, l := range strings.Split(strings.TrimRight(header, "\n"), "\n") {
		b.WriteString("# " + l + "\n")
	}
	fmt.Fprintf(&b, "accounts {\n  %s {\n    jetstream: enabled\n    users: [\n", acct)
	for _, id := range ids {
		if id.Role == RoleSystem {
			continue
		}
		p := f.Permissions(id, ids)
		fmt.Fprintf(&b, "      # %s\n", describe(id, f))
		fmt.Fprintf(&b, "      {\n        nkey: %s\n        permissions: {\n", key(id))
		writeRule(&b, "publish", p.PubAllow, p.PubDeny)
		writeRule(&b, "subscribe", p.SubAllow, p.SubDeny)
		if p.Responses {
			if p.MaxResponses == 1 && p.ResponsesFor == 0 {
				b.WriteString("          allow_responses: true\n")
			} else {
				fmt.Fprintf(&b, "          allow_responses: { max: %d, expires: %q }\n", p.MaxResponses, p.ResponsesFor.String())
			}
		}
		b.WriteString("        }\n      }\n")
	}
	b.WriteString("    ]\n  }\n")
	for _, id := range ids {
		if id.Role == RoleSystem {
			fmt.Fprintf(&b, "  SYS {\n    users: [\n      # %s\n      { nkey: %s }\n    ]\n  }\n", describe(id, f), key(id))
		}
	}
	b.WriteString("}\nsystem_account: SYS\n")
	return []byte(b.String())
}

func writeRule(b *strings.Builder, name string, allow, deny []string) {
	fmt.Fprintf(b, "          %s: {\n", name)
	for _, l := range []struct {
		k string
		v []string
	}{{"allow", allow}, {"deny", deny}} {
		if len(l.v) == 0 {
			continue
		}
		fmt.Fprintf(b, "            %s: [\n", l.k)
		for _, s := range l.v {
			fmt.Fprintf(b, "              %q\n", s)
		}
		b.WriteString("            ]\n")
	}
	b.WriteString("          }\n")
}

// describe is the comment above a user in the configuration.
func describe(id Identity, f Fleet) string {
	switch id.Role {
	case RoleWorker:
		s := fmt.Sprintf("%s: worker of host %s, inbox %s", id.Name, id.Host, id.InboxPrefix())
		if len(f.ClusterDrivers) > 0 {
			cd := slices.Clone(f.ClusterDrivers)
			sort.Strings(cd)
			s += "; pooled drivers " + strings.Join(cd, ",")
		}
		return s
	case RoleSystem:
		return id.Name + ": system account user (server monitoring)"
	}
	s := fmt.Sprintf("%s: %s, inbox %s", id.Name, id.Role, id.InboxPrefix())
	if len(id.Drivers) > 0 {
		s += "; drivers " + strings.Join(id.Drivers, ",")
	}
	if len(id.Hosts) > 0 {
		s += "; hosts " + strings.Join(id.Hosts, ",")
	}
	return s
}
