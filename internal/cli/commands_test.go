package cli

import (
	"flag"
	"os"
	"strings"
	"testing"

	"github.com/subbus/subbus/messages"
)

// Every op has exactly one driver command, named after it, documented in
// docs/cli.md; every driver command sends an op of the table.
func TestCommandsCoverEveryOp(t *testing.T) {
	doc, err := os.ReadFile("../../docs/cli.md")
	if err != nil {
		t.Fatal(err)
	}
	byOp := map[messages.Op]*command{}
	for _, c := range commands {
		if c.top {
			continue
		}
		if _, err := messages.ParseOp(string(c.op)); err != nil {
			t.Errorf("driver command %q: %v", c.name, err)
			continue
		}
		if byOp[c.op] != nil {
			t.Errorf("two commands for %s", c.op)
		}
		byOp[c.op] = c
	}
	for _, op := range messages.Ops() {
		c := byOp[op]
		if c == nil {
			t.Errorf("no command for op %s", op)
			continue
		}
		if c.name != CommandName(op) || !strings.HasPrefix(c.usage, "<driver> "+c.name+" ") {
			t.Errorf("command of %s is named %q, usage %q", op, c.name, c.usage)
		}
		words := strings.Fields(c.name)
		found, _, _, _ := findCommand(append([]string{"process"}, append(words, "x")...))
		if found != c {
			t.Errorf("findCommand does not find the command of %s", op)
		}
		if !strings.Contains(string(doc), "\nsubbus <driver> "+c.name+" ") {
			t.Errorf("docs/cli.md has no usage line for subbus <driver> %s", c.name)
		}
	}
}

// docs/cli.md documents every top-level command and every flag spelling.
func TestDocsCoverCommandsAndFlags(t *testing.T) {
	doc, err := os.ReadFile("../../docs/cli.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range commands {
		if c.top && !c.hidden && !strings.Contains(string(doc), "subbus "+c.name) {
			t.Errorf("docs/cli.md does not mention subbus %s", c.name)
		}
		own, global, conn := flagBlocks(c)
		for _, fs := range []*flag.FlagSet{own, global, conn} {
			fs.VisitAll(func(f *flag.Flag) {
				if !strings.Contains(string(doc), dashed(f.Name)) {
					t.Errorf("docs/cli.md does not mention %s (of %q)", dashed(f.Name), c.name)
				}
			})
		}
	}
}
