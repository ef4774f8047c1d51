package cli

import (
	"math"
	"strconv"
	"strings"
	"time"
)

// Units on the command line (docs/cli.md "Units"): sizes take a binary
// suffix (K, M, G, T, with or without "i" and "B": powers of 1024, as
// docker reads "512m") and a plain number keeps the flag's historical
// unit (MiB for --memory, GiB for --disk); durations take a Go duration
// ("90s", "1m30s") and a plain number is seconds. "none" (limits set)
// removes a limit.

// noneWord removes a limit in `limits set`.
const noneWord = "none"

// sizeUnits maps a suffix, lowercased and without a trailing "b"/"ib",
// to its power of 1024.
var sizeUnits = map[string]int{"": -1, "k": 1, "m": 2, "g": 3, "t": 4}

// parseSize parses s into a whole number of 1024^unitPow bytes (unitPow 2:
// MiB, 3: GiB). A plain number is already in that unit.
func parseSize(s string, unitPow int) (float64, error) {
	t := strings.TrimSpace(strings.ToLower(s))
	num := strings.TrimRightFunc(t, func(r rune) bool { return r >= 'a' && r <= 'z' })
	suf := t[len(num):]
	suf = strings.TrimSuffix(suf, "b")
	suf = strings.TrimSuffix(suf, "i")
	pow, ok := sizeUnits[suf]
	if !ok || num == "" {
		return 0, usagef("%q: want a size such as 512M, 1G, 1.5Gi or a plain number", s)
	}
	v, err := strconv.ParseFloat(num, 64)
	if err != nil || v < 0 || math.IsInf(v, 0) || math.IsNaN(v) {
		return 0, usagef("%q: want a size such as 512M, 1G, 1.5Gi or a plain number", s)
	}
	if pow < 0 {
		return v, nil
	}
	return v * math.Pow(1024, float64(pow-unitPow)), nil
}

// limitFlag is a limit flag's value: a number, or "none" (remove).
type limitFlag struct {
	v    float64
	set  bool
	none bool
	// parse converts the text (not "none") to the flag's unit.
	parse func(string) (float64, error)
	text  string
}

func (f *limitFlag) String() string { return f.text }

func (f *limitFlag) Set(s string) error {
	f.text = s
	f.set = true
	if strings.EqualFold(strings.TrimSpace(s), noneWord) {
		f.none, f.v = true, 0
		return nil
	}
	f.none = false
	v, err := f.parse(s)
	if err != nil {
		return err
	}
	f.v = v
	return nil
}

// mibFlag: --memory, in MiB; the result must be a whole number of MiB.
func mibFlag() limitFlag {
	return limitFlag{parse: func(s string) (float64, error) {
		v, err := parseSize(s, 2)
		if err != nil {
			return 0, err
		}
		if v != math.Trunc(v) {
			return 0, usagef("%q is not a whole number of MiB", s)
		}
		return v, nil
	}}
}

// gibFlag: --disk, in GiB.
func gibFlag() limitFlag {
	return limitFlag{parse: func(s string) (float64, error) { return parseSize(s, 3) }}
}

// numberFlag: --cpu and --pids, plain numbers.
func numberFlag(integer bool) limitFlag {
	return limitFlag{parse: func(s string) (float64, error) {
		v, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
		if err != nil || v < 0 || math.IsInf(v, 0) || math.IsNaN(v) || (integer && v != math.Trunc(v)) {
			return 0, usagef("%q: want a non-negative number", s)
		}
		return v, nil
	}}
}

// parseDuration reads a Go duration or a plain number of seconds.
func parseDuration(s string) (time.Duration, error) {
	t := strings.TrimSpace(s)
	if f, err := strconv.ParseFloat(t, 64); err == nil {
		if f < 0 || math.IsInf(f, 0) || math.IsNaN(f) || f > float64(math.MaxInt64)/float64(time.Second) {
			return 0, usagef("%q: want a duration such as 30s, 1m or a number of seconds", s)
		}
		return time.Duration(f * float64(time.Second)), nil
	}
	d, err := time.ParseDuration(t)
	if err != nil || d < 0 {
		return 0, usagef("%q: want a duration such as 30s, 1m or a number of seconds", s)
	}
	return d, nil
}

// durationFlag is a duration flag that also takes plain seconds.
type durationFlag struct {
	d   *time.Duration
	set bool
}

func (f *durationFlag) String() string {
	if f.d == nil {
		return ""
	}
	return f.d.String()
}

func (f *durationFlag) Set(s string) error {
	d, err := parseDuration(s)
	if err != nil {
		return err
	}
	*f.d, f.set = d, true
	return nil
}

// Type names the value in help ("duration").
func (f *durationFlag) Type() string { return "duration" }
