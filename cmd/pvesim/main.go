// Command pvesim serves a simulated Proxmox VE API over HTTPS (see
// docs/pvesim.md): pvesim --listen 127.0.0.1:8006 --password secret.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/subbus/subbus/internal/pvesim"
)

type multi []string

func (m *multi) String() string     { return strings.Join(*m, ",") }
func (m *multi) Set(v string) error { *m = append(*m, v); return nil }

func main() {
	if err := run(os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(2)
		}
		fmt.Fprintln(os.Stderr, "pvesim:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("pvesim", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:8006", "HTTPS listen address")
	password := fs.String("password", "", "root@pam password for ticket auth (default \"pvesim\"; \"-\" disables ticket logins)")
	var tokens multi
	fs.Var(&tokens, "token", "API token 'user@realm!name=SECRET' (repeatable)")
	nodes := fs.String("nodes", "", "comma-separated node names (default pve1, or the seed's nodes)")
	seedFile := fs.String("seed", "", "starting inventory (YAML or JSON)")
	schemaFile := fs.String("schema", "", "PVE API schema (apischema-pve9.json[.gz] or apidata.js) to validate requests against")
	authDelay := fs.Duration("auth-failure-delay", 3*time.Second, "delay of 401 answers (PVE: 3s)")
	delayFactor := fs.Float64("delay-factor", 1, "multiply the simulated operation durations")
	hang := fs.String("hang-tasks", "", "comma-separated task types that never finish (e.g. qmcreate; \"all\" for every type)")
	latency := fs.Duration("latency", 0, "extra delay before every answer")
	lockTimeout := fs.Duration("lock-timeout", 10*time.Second, "how long an operation waits for a guest's config file lock (PVE: 10s)")
	control := fs.Bool("control", false, "serve the control API under /pvesim/ (state changes as if made in the PVE UI)")
	verbose := fs.Bool("v", false, "log every request")
	if err := fs.Parse(args); err != nil {
		return err
	}
	logger := log.New(os.Stderr, "pvesim: ", log.LstdFlags)
	opts := pvesim.Options{Password: *password, Tokens: tokens, AuthFailureDelay: *authDelay,
		Delays: pvesim.DefaultDelays.Scale(*delayFactor), Latency: *latency, Control: *control, LockTimeout: *lockTimeout}
	if *authDelay <= 0 {
		opts.AuthFailureDelay = -1
	}
	if *verbose {
		opts.Logf = logger.Printf
	}
	if *seedFile != "" {
		seed, err := pvesim.LoadSeed(*seedFile)
		if err != nil {
			return err
		}
		opts.Seed = seed
		opts.Nodes = seed.Nodes
	}
	if *nodes != "" {
		opts.Nodes = strings.Split(*nodes, ",")
	}
	if *schemaFile != "" {
		s, err := pvesim.LoadSchema(*schemaFile)
		if err != nil {
			return err
		}
		opts.Schema = s
	}
	srv, err := pvesim.Start(*listen, opts)
	if err != nil {
		return err
	}
	defer srv.Close()
	for _, t := range strings.Split(*hang, ",") {
		if t = strings.TrimSpace(t); t == "all" {
			srv.HangTasks("", true)
		} else if t != "" {
			srv.HangTasks(t, true)
		}
	}
	schemaName := "builtin route table"
	if opts.Schema != nil {
		schemaName = opts.Schema.Name
	}
	logger.Printf("listening on %s (API %s)", srv.URL, srv.APIURL())
	logger.Printf("certificate SHA-256 fingerprint %s", srv.Fingerprint)
	logger.Printf("validating requests against %s", schemaName)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	<-ctx.Done()
	logger.Printf("shutting down")
	return nil
}
