package pvesim

import (
	"regexp"
	"strings"
	"time"
)

// Fault is an injected failure for requests matching Method (empty: any)
// and Path (a regular expression matched against the path under
// /api2/json; empty: any). The first matching fault applies: it waits
// Latency, then drops the connection without an answer (Drop), answers
// Status with Message (e.g. 500 "internal error", 503, 595), or, with
// neither, serves the request normally (latency only). Count > 0 limits
// how many requests it hits; 0 means until removed.
type Fault struct {
	Method  string
	Path    string
	Latency time.Duration
	Drop    bool
	Status  int
	Message string
	Count   int

	re   *regexp.Regexp
	hits int
}

// AddFault installs a fault and returns a function that removes it.
func (s *Sim) AddFault(f Fault) (remove func(), err error) {
	fp := &f
	if f.Path != "" {
		if fp.re, err = regexp.Compile(f.Path); err != nil {
			return nil, err
		}
	}
	s.mu.Lock()
	s.faults = append(s.faults, fp)
	s.mu.Unlock()
	return func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		for i, x := range s.faults {
			if x == fp {
				s.faults = append(s.faults[:i], s.faults[i+1:]...)
				return
			}
		}
	}, nil
}

// ClearFaults removes every fault and releases hung tasks.
func (s *Sim) ClearFaults() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = nil
	s.hang = map[string]bool{}
	s.releaseHungLocked()
}

func (s *Sim) matchFault(method, path string) *Fault {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, f := range s.faults {
		if f.Method != "" && !strings.EqualFold(f.Method, method) {
			continue
		}
		if f.re != nil && !f.re.MatchString(path) {
			continue
		}
		f.hits++
		if f.Count > 0 && f.hits >= f.Count {
			s.faults = append(s.faults[:i], s.faults[i+1:]...)
		}
		c := *f
		return &c
	}
	return nil
}
