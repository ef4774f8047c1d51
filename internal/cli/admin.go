package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/subbus/subbus/internal/cli/natsauth"
	"github.com/subbus/subbus/internal/natsconn"
)

// adminOpts are the flags of `subbus admin creds`.
type adminOpts struct {
	hosts          string
	clusterDrivers string
	clients        stringList
	out            string
	envKeys        bool
	url            string
	streamFor      time.Duration
	account        string
	names          string
	clientCerts    string
	validity       time.Duration
}

// cmdAdmin runs `subbus admin creds`: it generates the fleet's identities
// and permissions (internal/cli/natsauth) into --out. See docs/security.md.
func cmdAdmin(e *env, c *invocation) error {
	a := c.o.admin
	if len(c.args) == 1 && c.args[0] == "certs" {
		return adminCerts(e, a)
	}
	if len(c.args) != 1 || c.args[0] != "creds" {
		return usagef("admin: usage: subbus admin creds --hosts H1,H2 --out DIR | subbus admin certs --names N1,N2 --out DIR")
	}
	if a.out == "" {
		return usagef("admin creds: --out DIR is required")
	}
	f := natsauth.Fleet{Account: a.account, Hosts: splitList(a.hosts), ClusterDrivers: splitList(a.clusterDrivers), StreamFor: a.streamFor}
	if len(a.clients) > 0 {
		f.Clients = []natsauth.Identity{}
		for _, spec := range a.clients {
			id, err := parseClient(spec)
			if err != nil {
				return err
			}
			f.Clients = append(f.Clients, id)
		}
	}
	ids, err := f.Identities()
	if err != nil {
		return usagef("admin creds: %v", err)
	}
	if err := os.MkdirAll(a.out, 0o700); err != nil {
		return err
	}
	out, err := filepath.Abs(a.out)
	if err != nil {
		return err
	}
	for _, id := range ids {
		p := filepath.Join(out, id.Name+".nk")
		if err := writeNew(p, append(id.Seed, '\n'), 0o600); err != nil {
			return err
		}
		if id.Role == natsauth.RoleSystem {
			continue
		}
		ctx := natsconn.Context{Description: fmt.Sprintf("subbus %s %s", id.Role, id.Name), URL: a.url, NKey: p, InboxPrefix: id.InboxPrefix()}
		b, _ := json.MarshalIndent(ctx, "", "  ")
		if err := writeNew(filepath.Join(out, id.Name+".context.json"), append(b, '\n'), 0o600); err != nil {
			return err
		}
	}
	key := natsauth.PublicKey
	if a.envKeys {
		key = natsauth.EnvKey
		var env strings.Builder
		for _, id := range ids {
			fmt.Fprintf(&env, "%s=%s\n", id.EnvVar(), id.Public)
		}
		if err := writeNew(filepath.Join(out, "nkeys.env"), []byte(env.String()), 0o644); err != nil {
			return err
		}
	}
	if err := writeNew(filepath.Join(out, "accounts.conf"), f.Config(ids, key, f.Header(a.envKeys)), 0o644); err != nil {
		return err
	}
	if e.json {
		type row struct {
			Name, Role, Inbox, Public, Seed string
		}
		var rows []row
		for _, id := range ids {
			rows = append(rows, row{id.Name, string(id.Role), id.InboxPrefix(), id.Public, filepath.Join(out, id.Name+".nk")})
		}
		return e.printJSON(rows)
	}
	tw := e.table()
	fmt.Fprintf(tw, "IDENTITY\tROLE\tINBOX PREFIX\tSEED\n")
	for _, id := range ids {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", id.Name, id.Role, id.InboxPrefix(), filepath.Join(out, id.Name+".nk"))
	}
	fmt.Fprintf(tw, "\nInclude %s from each nats-server configuration.\n", filepath.Join(out, "accounts.conf"))
	return tw.Flush()
}

// parseClient reads NAME:ROLE[:drivers=a,b][:hosts=h1,h2].
func parseClient(spec string) (natsauth.Identity, error) {
	parts := strings.Split(spec, ":")
	if len(parts) < 2 {
		return natsauth.Identity{}, usagef("--client %q: want NAME:ROLE[:drivers=D,…][:hosts=H,…]", spec)
	}
	id := natsauth.Identity{Name: parts[0], Role: natsauth.Role(parts[1])}
	for _, p := range parts[2:] {
		k, v, _ := strings.Cut(p, "=")
		switch k {
		case "drivers":
			id.Drivers = splitList(v)
		case "hosts":
			id.Hosts = splitList(v)
		default:
			return id, usagef("--client %q: unknown scope %q (drivers=, hosts=)", spec, k)
		}
	}
	return id, nil
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// writeNew writes a file that must not exist yet: regenerating into a
// directory of live credentials would silently replace them.
func writeNew(path string, data []byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("%s exists: generate into an empty directory", path)
	}
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// adminCerts runs `subbus admin certs`: a CA, a server certificate for
// --names and client certificates for --client-certs, into --out.
func adminCerts(e *env, a adminOpts) error {
	names := splitList(a.names)
	if a.out == "" || len(names) == 0 {
		return usagef("admin certs: --out DIR and --names N1,N2 (server DNS names or IPs) are required")
	}
	ca, err := natsauth.NewCA("subbus NATS CA", a.validity)
	if err != nil {
		return err
	}
	srv, err := ca.Server(names, a.validity)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(a.out, 0o700); err != nil {
		return err
	}
	type outFile struct {
		name string
		data []byte
		mode os.FileMode
	}
	files := []outFile{{"ca.pem", ca.CertPEM, 0o644}, {"ca-key.pem", ca.KeyPEM, 0o600}, {"server.pem", srv.CertPEM, 0o644}, {"server-key.pem", srv.KeyPEM, 0o600}}
	for _, c := range splitList(a.clientCerts) {
		p, err := ca.Client(c, a.validity)
		if err != nil {
			return err
		}
		files = append(files, outFile{c + ".pem", p.CertPEM, 0o644}, outFile{c + "-key.pem", p.KeyPEM, 0o600})
	}
	for _, f := range files {
		if err := writeNew(filepath.Join(a.out, f.name), f.data, f.mode); err != nil {
			return err
		}
		fmt.Fprintln(e.stdout, filepath.Join(a.out, f.name))
	}
	return nil
}
