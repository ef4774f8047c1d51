// Package natsconn holds the NATS connection options shared by the worker
// and subbus. Flag names and environment variables follow natscli, so a
// user's existing `nats` setup (including nats contexts) works unchanged:
//
//	--server, -s   NATS_URL       server URL(s), comma separated
//	--creds        NATS_CREDS     user credentials (.creds) file
//	--nkey         NATS_NKEY      nkey seed file
//	--user         NATS_USER      user name
//	--password     NATS_PASSWORD  password
//	--token        NATS_TOKEN     authentication token
//	--tlscert      NATS_CERT      client certificate (PEM)
//	--tlskey       NATS_KEY       client private key (PEM)
//	--tlsca        NATS_CA        CA certificate(s) to verify the server (PEM)
//	--context      NATS_CONTEXT   nats context name
//	--no-context                  ignore the selected nats context
//	--inbox-prefix                custom inbox prefix (e.g. _INBOX_alice)
//	--connect-timeout NATS_CONNECT_TIMEOUT  dial timeout (default 5s)
//
// Precedence, as in natscli: a flag beats its environment variable, and
// both beat the values of the context. Without --context/NATS_CONTEXT the
// context selected in $XDG_CONFIG_HOME/nats/context.txt (default
// ~/.config/nats/context.txt) is used unless --no-context is given.
// Contexts are read from $XDG_CONFIG_HOME/nats/context/<name>.json with the
// keys url, creds, nkey, user, password, token, cert, key, ca, inbox_prefix.
//
// Local credential: a worker's embedded server requires authentication
// with an nkey whose seed the worker writes to LocalCredential() (mode
// 0600). When no credential is given (no --creds, --nkey, --user or
// --token, from a flag, the environment or the context) and every server
// URL is on a loopback address, Resolve uses the first readable file of
// LocalCredentials(): root's worker's for root, the user's own worker's,
// then root's worker's (readable when an administrator granted the group)
// for anyone else. An authorization failure then names the file to ask
// access for (*NotAuthorizedError). docs/security.md describes the model.
package natsconn

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
)

// DefaultURL is where the worker's embedded server listens and where
// clients connect when no server is configured.
const DefaultURL = "nats://127.0.0.1:4222"

// DefaultConnectTimeout bounds dialling one server.
const DefaultConnectTimeout = 5 * time.Second

// Options are the connection options. The zero value connects to DefaultURL
// without authentication (plus whatever the selected nats context says).
type Options struct {
	URL         string // comma-separated server URLs
	Creds       string // credentials file
	NKey        string // nkey seed file
	User        string
	Password    string
	Token       string
	TLSCert     string
	TLSKey      string
	TLSCA       string
	Context     string // nats context name; "" means the selected one
	NoContext   bool   // ignore the selected context
	InboxPrefix string
	// ConnectTimeout bounds dialling; 0 means DefaultConnectTimeout.
	ConnectTimeout time.Duration

	// localCred is set by Resolve when NKey is a discovered local
	// credential; localCandidates are the files it looked at.
	localCred       bool
	localCandidates []string
}

// SystemCredential is the local credential of a worker run by root: the
// nkey seed its embedded server accepts. A variable so tests can move it.
var SystemCredential = "/var/lib/subbus/client.nk"

// LocalCredential is where a worker run by the current user keeps the
// seed of its embedded server's credential: SystemCredential for root,
// else $XDG_STATE_HOME/subbus/client.nk (~/.local/state/subbus/client.nk).
func LocalCredential() string {
	if os.Geteuid() == 0 {
		return SystemCredential
	}
	base := os.Getenv("XDG_STATE_HOME")
	if base == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return SystemCredential
		}
		base = filepath.Join(home, ".local", "state")
	}
	return filepath.Join(base, "subbus", "client.nk")
}

// LocalCredentials lists, in order, the files a client looks for a local
// credential in: the current user's own worker's, then root's worker's.
func LocalCredentials() []string {
	own := LocalCredential()
	if own == SystemCredential {
		return []string{own}
	}
	return []string{own, SystemCredential}
}

// NotAuthorizedError: the server refused the connection's credentials, or
// the lack of them. Path is the local credential to ask access to ("" when
// credentials were given explicitly).
type NotAuthorizedError struct {
	Path string
	Err  error
}

func (e *NotAuthorizedError) Error() string {
	if e.Path == "" {
		return "not authorized: the NATS server refused these credentials (" + e.Err.Error() + ")"
	}
	return "not authorized - ask an administrator for access to " + e.Path + " or use --creds"
}

func (e *NotAuthorizedError) Unwrap() error { return e.Err }

// FromEnv returns the options set by the natscli environment variables.
// Call it before RegisterFlags so flags override the environment.
func FromEnv() Options {
	o := Options{
		URL:         os.Getenv("NATS_URL"),
		Creds:       os.Getenv("NATS_CREDS"),
		NKey:        os.Getenv("NATS_NKEY"),
		User:        os.Getenv("NATS_USER"),
		Password:    os.Getenv("NATS_PASSWORD"),
		Token:       os.Getenv("NATS_TOKEN"),
		TLSCert:     os.Getenv("NATS_CERT"),
		TLSKey:      os.Getenv("NATS_KEY"),
		TLSCA:       os.Getenv("NATS_CA"),
		Context:     os.Getenv("NATS_CONTEXT"),
		InboxPrefix: os.Getenv("NATS_INBOX_PREFIX"),
	}
	if d, err := time.ParseDuration(os.Getenv("NATS_CONNECT_TIMEOUT")); err == nil && d > 0 {
		o.ConnectTimeout = d
	}
	return o
}

// RegisterFlags registers the connection flags on fs, with the current
// values of o as defaults (so FromEnv().RegisterFlags gives env < flag).
func (o *Options) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&o.URL, "server", o.URL, "NATS server URL(s), comma separated (env NATS_URL; default "+DefaultURL+")")
	fs.StringVar(&o.URL, "s", o.URL, "shorthand for --server")
	fs.StringVar(&o.Creds, "creds", o.Creds, "NATS user credentials file (env NATS_CREDS)")
	fs.StringVar(&o.NKey, "nkey", o.NKey, "NATS nkey seed file (env NATS_NKEY)")
	fs.StringVar(&o.User, "user", o.User, "NATS user name (env NATS_USER)")
	fs.StringVar(&o.Password, "password", o.Password, "NATS password (env NATS_PASSWORD)")
	fs.StringVar(&o.Token, "token", o.Token, "NATS authentication token (env NATS_TOKEN)")
	fs.StringVar(&o.TLSCert, "tlscert", o.TLSCert, "TLS client certificate file (env NATS_CERT)")
	fs.StringVar(&o.TLSKey, "tlskey", o.TLSKey, "TLS client private key file (env NATS_KEY)")
	fs.StringVar(&o.TLSCA, "tlsca", o.TLSCA, "TLS CA certificate file to verify the server (env NATS_CA)")
	fs.StringVar(&o.Context, "context", o.Context, "nats context name (env NATS_CONTEXT)")
	fs.BoolVar(&o.NoContext, "no-context", o.NoContext, "ignore the selected nats context")
	fs.StringVar(&o.InboxPrefix, "inbox-prefix", o.InboxPrefix, "custom inbox prefix (env NATS_INBOX_PREFIX)")
	fs.DurationVar(&o.ConnectTimeout, "connect-timeout", o.ConnectTimeout, "NATS dial timeout (env NATS_CONNECT_TIMEOUT; default 5s)")
}

// explicit reports whether any connection setting was given by flag or env.
func (o Options) explicit() bool {
	return o.URL != "" || o.Creds != "" || o.NKey != "" || o.User != "" || o.Password != "" ||
		o.Token != "" || o.TLSCert != "" || o.TLSKey != "" || o.TLSCA != "" || o.Context != "" || o.InboxPrefix != ""
}

// IsZero reports whether nothing says where to connect: no option was set
// and no nats context is selected. The worker then starts an embedded
// server on DefaultURL.
func (o Options) IsZero() bool {
	if o.explicit() {
		return false
	}
	if o.NoContext {
		return true
	}
	name, err := SelectedContext()
	return err != nil || name == ""
}

// Context is a natscli context file (the keys subbus understands).
type Context struct {
	Description string `json:"description,omitempty"`
	URL         string `json:"url,omitempty"`
	Creds       string `json:"creds,omitempty"`
	NKey        string `json:"nkey,omitempty"`
	User        string `json:"user,omitempty"`
	Password    string `json:"password,omitempty"`
	Token       string `json:"token,omitempty"`
	Cert        string `json:"cert,omitempty"`
	Key         string `json:"key,omitempty"`
	CA          string `json:"ca,omitempty"`
	InboxPrefix string `json:"inbox_prefix,omitempty"`
}

// configDir is natscli's configuration directory.
func configDir() (string, error) {
	if x := os.Getenv("XDG_CONFIG_HOME"); x != "" {
		return filepath.Join(x, "nats"), nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", err
	}
	return filepath.Join(home, ".config", "nats"), nil
}

// SelectedContext returns the name in context.txt, or "" when none is selected.
func SelectedContext() (string, error) {
	dir, err := configDir()
	if err != nil {
		return "", err
	}
	b, err := os.ReadFile(filepath.Join(dir, "context.txt"))
	if errors.Is(err, os.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

// LoadContext reads the named context file.
func LoadContext(name string) (Context, error) {
	var c Context
	if name == "" || strings.ContainsAny(name, `/\`) || name == "." || name == ".." {
		return c, fmt.Errorf("invalid nats context name %q", name)
	}
	dir, err := configDir()
	if err != nil {
		return c, err
	}
	path := filepath.Join(dir, "context", name+".json")
	b, err := os.ReadFile(path)
	if err != nil {
		return c, fmt.Errorf("nats context %q: %w", name, err)
	}
	if err := json.Unmarshal(b, &c); err != nil {
		return c, fmt.Errorf("nats context %q (%s): %w", name, path, err)
	}
	for _, p := range []*string{&c.Creds, &c.NKey, &c.Cert, &c.Key, &c.CA} {
		*p = expandHome(*p)
	}
	return c, nil
}

func expandHome(p string) string {
	if p == "~" || strings.HasPrefix(p, "~/") {
		if home, err := os.UserHomeDir(); err == nil {
			return filepath.Join(home, p[1:])
		}
	}
	return p
}

// Resolve returns the effective options: the context's values (the named
// one, or the selected one unless NoContext) under the explicit ones, and
// URL defaulted to DefaultURL.
func (o Options) Resolve() (Options, error) {
	name := o.Context
	if name == "" && !o.NoContext {
		sel, err := SelectedContext()
		if err != nil {
			return o, fmt.Errorf("reading the selected nats context: %w", err)
		}
		name = sel
	}
	r := o
	if name != "" {
		c, err := LoadContext(name)
		if err != nil {
			return o, err
		}
		def := func(dst *string, v string) {
			if *dst == "" {
				*dst = v
			}
		}
		def(&r.URL, c.URL)
		def(&r.Creds, c.Creds)
		def(&r.NKey, c.NKey)
		// user/password come as a pair: an explicit user keeps its own password.
		if r.User == "" {
			r.User, r.Password = c.User, firstNonEmpty(r.Password, c.Password)
		}
		def(&r.Token, c.Token)
		def(&r.TLSCert, c.Cert)
		def(&r.TLSKey, c.Key)
		def(&r.TLSCA, c.CA)
		def(&r.InboxPrefix, c.InboxPrefix)
	}
	if r.URL == "" {
		r.URL = DefaultURL
	}
	if r.ConnectTimeout <= 0 {
		r.ConnectTimeout = DefaultConnectTimeout
	}
	if r.Creds == "" && r.NKey == "" && r.User == "" && r.Token == "" && allLoopback(r.URL) {
		r.localCandidates = LocalCredentials()
		for _, p := range r.localCandidates {
			if f, err := os.Open(p); err == nil {
				f.Close()
				r.NKey, r.localCred = p, true
				break
			}
		}
	}
	return r, nil
}

// allLoopback reports whether every URL of the comma-separated list names
// a loopback host: the local credential is offered to local servers only.
func allLoopback(urls string) bool {
	for _, u := range strings.Split(urls, ",") {
		u = strings.TrimSpace(u)
		if !strings.Contains(u, "://") {
			u = "nats://" + u
		}
		pu, err := url.Parse(u)
		if err != nil {
			return false
		}
		h := pu.Hostname()
		if h == "localhost" {
			continue
		}
		ip := net.ParseIP(h)
		if ip == nil || !ip.IsLoopback() {
			return false
		}
	}
	return true
}

// notAuthorized names the local credential to ask access to: the first
// candidate that exists or may exist (the caller cannot read it, or cannot
// even look into its directory), else root's.
func (o Options) notAuthorized(err error) error {
	if o.Creds != "" || o.User != "" || o.Token != "" || (o.NKey != "" && !o.localCred) {
		return &NotAuthorizedError{Err: err}
	}
	path := SystemCredential
	if o.localCred {
		path = o.NKey
	} else {
		for _, p := range o.localCandidates {
			if _, serr := os.Stat(p); serr == nil || !errors.Is(serr, fs.ErrNotExist) {
				path = p
				break
			}
		}
	}
	return &NotAuthorizedError{Path: path, Err: err}
}

func firstNonEmpty(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// NATSOptions returns the nats.go options for the resolved o (call Resolve
// first): authentication, TLS, inbox prefix, reconnecting forever with
// backoff, and the dial timeout.
func (o Options) NATSOptions(name string) ([]nats.Option, error) {
	opts := []nats.Option{
		nats.Name(name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(time.Second),
		nats.ReconnectJitter(500*time.Millisecond, 2*time.Second),
		nats.Timeout(o.ConnectTimeout),
	}
	if o.Creds != "" {
		opts = append(opts, nats.UserCredentials(o.Creds))
	}
	if o.NKey != "" {
		opt, err := nats.NkeyOptionFromSeed(o.NKey)
		if err != nil {
			return nil, fmt.Errorf("nkey %s: %w", o.NKey, err)
		}
		opts = append(opts, opt)
	}
	if o.User != "" {
		opts = append(opts, nats.UserInfo(o.User, o.Password))
	}
	if o.Token != "" {
		opts = append(opts, nats.Token(o.Token))
	}
	if (o.TLSCert == "") != (o.TLSKey == "") {
		return nil, errors.New("--tlscert and --tlskey must be given together")
	}
	if o.TLSCert != "" {
		opts = append(opts, nats.ClientCert(o.TLSCert, o.TLSKey))
	}
	if o.TLSCA != "" {
		opts = append(opts, nats.RootCAs(o.TLSCA))
	}
	if o.InboxPrefix != "" {
		opts = append(opts, nats.CustomInboxPrefix(o.InboxPrefix))
	}
	return opts, nil
}

// Connect resolves o and connects, naming the connection name (shown by
// `nats server report connections`). The connection reconnects forever;
// extra options are applied last (e.g. nats.RetryOnFailedConnect(true) for
// a daemon that may start before its server).
func (o Options) Connect(name string, extra ...nats.Option) (*nats.Conn, error) {
	r, err := o.Resolve()
	if err != nil {
		return nil, err
	}
	opts, err := r.NATSOptions(name)
	if err != nil {
		return nil, err
	}
	if r.localCred && len(extra) > 0 {
		// The extra options may make a rejected credential invisible
		// (nats.RetryOnFailedConnect keeps retrying with it), so probe a
		// server that is up once without them: one that asks for no
		// authentication rejects the discovered nkey.
		if probe, perr := nats.Connect(r.URL, opts...); perr == nil {
			probe.Close()
		} else if errors.Is(perr, nats.ErrNkeysNotSupported) {
			r.NKey, r.localCred = "", false
			if opts, err = r.NATSOptions(name); err != nil {
				return nil, err
			}
		}
	}
	nc, err := nats.Connect(r.URL, append(opts, extra...)...)
	if errors.Is(err, nats.ErrNkeysNotSupported) && r.localCred {
		// A local server that asks for no authentication: the discovered
		// credential is not for it.
		r.NKey, r.localCred = "", false
		if opts, err = r.NATSOptions(name); err != nil {
			return nil, err
		}
		nc, err = nats.Connect(r.URL, append(opts, extra...)...)
	}
	if errors.Is(err, nats.ErrAuthorization) {
		return nil, r.notAuthorized(err)
	}
	if err != nil {
		return nil, fmt.Errorf("connecting to NATS at %s: %w", r.URL, err)
	}
	return nc, nil
}
