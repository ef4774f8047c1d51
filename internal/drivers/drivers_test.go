package drivers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
)

func TestCodeSurvivesWrapping(t *testing.T) {
	cause := os.ErrNotExist
	base := Wrap(NotFound, cause, "instance web")
	wrapped := fmt.Errorf("op get: %w", fmt.Errorf("layer: %w", base))

	if got := CodeOf(wrapped); got != NotFound {
		t.Fatalf("CodeOf = %v, want not_found", got)
	}
	if !errors.Is(wrapped, ErrNotFound) {
		t.Fatal("errors.Is(ErrNotFound) failed through wrapping")
	}
	if errors.Is(wrapped, ErrConflict) {
		t.Fatal("errors.Is matched the wrong code")
	}
	if !errors.Is(wrapped, os.ErrNotExist) {
		t.Fatal("the cause was lost")
	}
	var e *Error
	if !errors.As(wrapped, &e) || e.Code != NotFound {
		t.Fatal("errors.As(*Error) failed")
	}
}

func TestCodeOf(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want Code
	}{
		{"nil", nil, 0},
		{"plain", errors.New("x"), Internal},
		{"deadline", context.DeadlineExceeded, Timeout},
		{"canceled", fmt.Errorf("w: %w", context.Canceled), Timeout},
		{"errorf", Errorf(Conflict, "busy"), Conflict},
		{"errorf wraps", Errorf(Unavailable, "down: %w", context.DeadlineExceeded), Unavailable},
		{"sentinel", fmt.Errorf("x: %w", ErrUnsupported), Unsupported},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := CodeOf(tc.err); got != tc.want {
				t.Fatalf("CodeOf(%v) = %v, want %v", tc.err, got, tc.want)
			}
		})
	}
}

func TestCodesRoundTripAndRetryable(t *testing.T) {
	seen := map[string]bool{}
	exits := map[int]bool{2: true, 11: true, 12: true} // the CLI's own: usage, no_worker, no_reply
	for _, c := range Codes() {
		b, err := json.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		var back Code
		if err := json.Unmarshal(b, &back); err != nil || back != c {
			t.Fatalf("round trip of %v: %v %v", c, back, err)
		}
		if seen[c.String()] {
			t.Fatalf("duplicate name %s", c)
		}
		seen[c.String()] = true
		want := c == Unavailable || c == Timeout
		if c.Retryable() != want {
			t.Fatalf("%v.Retryable() = %v", c, c.Retryable())
		}
		if c.Phrase() == "" || c.Exit() <= 0 || exits[c.Exit()] {
			t.Fatalf("%v: phrase %q, exit status %d (each code needs a phrase and its own exit status)", c, c.Phrase(), c.Exit())
		}
		exits[c.Exit()] = true
		if !errors.Is(Errorf(c, "x"), c.Sentinel()) {
			t.Fatalf("%v: sentinel does not match", c)
		}
	}
	var c Code
	if err := json.Unmarshal([]byte(`"nope"`), &c); err == nil {
		t.Fatal("unknown code accepted")
	}
}

func TestValidateName(t *testing.T) {
	tests := []struct {
		name string
		ok   bool
	}{
		{"web", true}, {"web-1.prod_a", true}, {"A9", true},
		{"", false}, {".", false}, {"..", false}, {"../etc", false}, {"a/b", false},
		{"-rf", false}, {".hidden", false}, {"a b", false}, {"a\nb", false}, {"a\x00", false},
		{"é", false}, {strings.Repeat("a", MaxNameLen), true}, {strings.Repeat("a", MaxNameLen+1), false},
	}
	for _, tc := range tests {
		err := ValidateName("name", tc.name)
		if (err == nil) != tc.ok {
			t.Errorf("ValidateName(%q) = %v, want ok=%v", tc.name, err, tc.ok)
		}
		if err != nil && (CodeOf(err) != InvalidArgument || !strings.Contains(err.Error(), "name")) {
			t.Errorf("ValidateName(%q): error %v must be invalid_argument naming the field", tc.name, err)
		}
	}
}

type coreOnly struct{ Driver }
type withExec struct{ coreOnly }

func (withExec) Exec(context.Context, string, ExecRequest, Writer, Writer) (int, error) {
	return 0, nil
}

type narrowed struct{ withExec }

func (narrowed) Capabilities() Capabilities { return Capabilities{} }

func TestCapabilitiesOf(t *testing.T) {
	if c := CapabilitiesOf(coreOnly{}); c != (Capabilities{}) {
		t.Fatalf("core-only driver claims %+v", c)
	}
	if c := CapabilitiesOf(withExec{}); !c.Exec || c.Logs {
		t.Fatalf("exec driver: %+v", c)
	}
	if c := CapabilitiesOf(narrowed{}); c.Exec {
		t.Fatal("CapabilitiesReporter did not narrow exec")
	}
}

func TestClassify(t *testing.T) {
	native := errors.New("native refusal")
	coder := ErrorCoderFunc(func(err error) Code {
		if errors.Is(err, native) {
			return Unavailable
		}
		return Internal
	})
	tests := []struct {
		name string
		err  error
		want Code
	}{
		{"nil", nil, 0},
		{"native, wrapped with context", fmt.Errorf("start web: %w", native), Unavailable},
		{"unknown native", errors.New("odd"), Internal},
		{"built with Errorf keeps its code", Errorf(Conflict, "web is running"), Conflict},
		{"Errorf wrapping a native error keeps its own code", Errorf(NotFound, "web: %w", native), NotFound},
		{"Errorf wrapped again", fmt.Errorf("delete: %w", Errorf(Conflict, "busy")), Conflict},
		{"deadline", fmt.Errorf("stop web: %w", context.DeadlineExceeded), Timeout},
		{"canceled", context.Canceled, Timeout},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := Classify(coder, tc.err); got != tc.want {
				t.Fatalf("Classify(%v) = %v, want %v", tc.err, got, tc.want)
			}
		})
	}
}
