package pvesim

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
)

// controlPrefix is where the control API lives (Options.Control). It is
// not part of PVE's API: it changes state "as if done in the PVE UI" for
// tests that run the simulator as a separate program.
const controlPrefix = "/pvesim/"

// serveControl serves the control API; the caller authenticated.
func (s *Sim) serveControl(w http.ResponseWriter, hr *http.Request) {
	rel := strings.Trim(strings.TrimPrefix(hr.URL.Path, controlPrefix), "/")
	parts := strings.Split(rel, "/")
	var body map[string]json.RawMessage
	raw, _ := io.ReadAll(io.LimitReader(hr.Body, 1<<20))
	if len(raw) > 0 {
		if err := json.Unmarshal(raw, &body); err != nil {
			s.writeError(w, &APIError{Status: 400, Message: "control API: body must be a JSON object\n"})
			return
		}
	}
	str := func(k string) string {
		var v string
		_ = json.Unmarshal(body[k], &v)
		return v
	}
	var err error
	switch {
	case hr.Method == "POST" && rel == "guests":
		var spec GuestSpec
		if err = json.Unmarshal(raw, &spec); err == nil {
			err = s.CreateGuest(spec)
		}
	case len(parts) >= 2 && parts[0] == "guests":
		vmid, perr := strconv.Atoi(parts[1])
		switch {
		case perr != nil:
			err = errors.New("bad vmid")
		case hr.Method == "DELETE" && len(parts) == 2:
			err = s.DeleteGuest(vmid)
		case hr.Method == "POST" && len(parts) == 3 && parts[2] == "status":
			err = s.SetGuestStatus(vmid, str("status"))
		case hr.Method == "POST" && len(parts) == 3 && parts[2] == "config":
			err = s.SetConfig(vmid, str("key"), str("value"))
		case hr.Method == "POST" && len(parts) == 3 && parts[2] == "ignore-shutdown":
			var b bool
			_ = json.Unmarshal(body["ignore"], &b)
			err = s.SetGuestIgnoresShutdown(vmid, b)
		default:
			err = errNotFound
		}
	case hr.Method == "POST" && len(parts) == 3 && parts[0] == "nodes" && parts[2] == "online":
		var b bool
		_ = json.Unmarshal(body["online"], &b)
		err = s.SetNodeOnline(parts[1], b)
	case hr.Method == "POST" && rel == "hang":
		var b bool
		_ = json.Unmarshal(body["hang"], &b)
		s.HangTasks(str("type"), b)
	case hr.Method == "POST" && rel == "faults":
		var f Fault
		if err = json.Unmarshal(raw, &f); err == nil {
			_, err = s.AddFault(f)
		}
	case hr.Method == "DELETE" && rel == "faults":
		s.ClearFaults()
	default:
		err = errNotFound
	}
	if err != nil {
		status := 400
		if err == errNotFound {
			status = 404
		}
		s.writeError(w, &APIError{Status: status, Message: "control API: " + err.Error() + "\n"})
		return
	}
	setHeaders(w.Header())
	w.WriteHeader(200)
	_, _ = w.Write([]byte(`{"data":null}`))
}

var errNotFound = errors.New("no such control endpoint")
