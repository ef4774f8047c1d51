package pvesim

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
)

// Schema is PVE's published API schema (pve-docs api-viewer/apidata.js, as
// a JSON tree), or the simulator's own route table in the same shape. It
// resolves concrete paths to their templates and validates parameters with
// the rules and messages of PVE's JSONSchema.pm.
type Schema struct {
	roots []*schemaNode
	// Name says where the schema came from ("builtin" or the file name).
	Name string
}

type schemaNode struct {
	Path     string             `json:"path"`
	Text     string             `json:"text"`
	Info     map[string]*Method `json:"info"`
	Children []*schemaNode      `json:"children"`
}

// Method is one path+method entry of the schema.
type Method struct {
	Method     string `json:"method"`
	Name       string `json:"name"`
	Parameters *Prop  `json:"parameters"`
	Returns    *Prop  `json:"returns"`
	Protected  flag   `json:"protected"`
	Proxyto    string `json:"proxyto"`
	AllowToken flag   `json:"allowtoken"`
}

// Prop is a JSON schema property as PVE writes it.
type Prop struct {
	TypeRaw              json.RawMessage  `json:"type"`
	Optional             flag             `json:"optional"`
	Enum                 []any            `json:"enum"`
	Minimum              *num             `json:"minimum"`
	Maximum              *num             `json:"maximum"`
	MaxLength            *num             `json:"maxLength"`
	MinLength            *num             `json:"minLength"`
	Pattern              string           `json:"pattern"`
	FormatRaw            json.RawMessage  `json:"format"`
	DefaultKey           flag             `json:"default_key"`
	Alias                string           `json:"alias"`
	KeyAlias             string           `json:"keyAlias"`
	Items                *Prop            `json:"items"`
	Properties           map[string]*Prop `json:"properties"`
	AdditionalProperties json.RawMessage  `json:"additionalProperties"`

	once       sync.Once
	typ        string
	formatName string
	formatObj  map[string]*Prop
	re         *regexp.Regexp
}

// num is a schema number; the schema writes a few as strings.
type num float64

func (n *num) UnmarshalJSON(b []byte) error {
	f, err := strconv.ParseFloat(strings.Trim(string(b), `"`), 64)
	if err != nil {
		return nil // not a number: treated as absent
	}
	*n = num(f)
	return nil
}

// flag decodes PVE's 0/1 (or true/false) schema flags.
type flag bool

func (f *flag) UnmarshalJSON(b []byte) error {
	s := strings.Trim(string(b), `"`)
	*f = s == "1" || s == "true"
	return nil
}

func (p *Prop) init() {
	p.once.Do(func() {
		var s string
		if json.Unmarshal(p.TypeRaw, &s) == nil {
			p.typ = s
		}
		if len(p.FormatRaw) > 0 {
			if json.Unmarshal(p.FormatRaw, &s) == nil {
				p.formatName = s
			} else {
				var m map[string]*Prop
				if json.Unmarshal(p.FormatRaw, &m) == nil {
					p.formatObj = m
				}
			}
		}
		if p.Pattern != "" {
			// PVE anchors patterns: m/^$pattern$/.
			p.re, _ = regexp.Compile(`^(?:` + p.Pattern + `)$`)
		}
	})
}

// Type is the property's type name ("string", "integer", ...).
func (p *Prop) Type() string { p.init(); return p.typ }

func (p *Prop) additional() bool {
	s := strings.TrimSpace(string(p.AdditionalProperties))
	return s == "1" || s == "true" || strings.HasPrefix(s, "{")
}

// LoadSchema reads a schema file: the JSON tree (optionally gzip
// compressed, e.g. apischema-pve9.json.gz) or pve-docs' apidata.js.
func LoadSchema(path string) (*Schema, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	s, err := ParseSchema(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	s.Name = path
	return s, nil
}

// ParseSchema parses schema bytes in any of the forms LoadSchema reads.
func ParseSchema(b []byte) (*Schema, error) {
	if len(b) > 2 && b[0] == 0x1f && b[1] == 0x8b {
		zr, err := gzip.NewReader(bytes.NewReader(b))
		if err != nil {
			return nil, err
		}
		if b, err = io.ReadAll(zr); err != nil {
			return nil, err
		}
	}
	b = bytes.TrimSpace(b)
	if p := []byte("const apiSchema = "); bytes.HasPrefix(b, p) {
		b = bytes.TrimSuffix(bytes.TrimSpace(b[len(p):]), []byte(";"))
	}
	var roots []*schemaNode
	if err := json.Unmarshal(b, &roots); err != nil {
		return nil, fmt.Errorf("not a PVE API schema: %w", err)
	}
	if len(roots) == 0 {
		return nil, fmt.Errorf("not a PVE API schema: empty")
	}
	return &Schema{roots: roots}, nil
}

// Has reports whether the schema defines method on the template path.
func (s *Schema) Has(method, template string) bool {
	n := s.find(template)
	return n != nil && n.Info[method] != nil
}

func (s *Schema) find(template string) *schemaNode {
	var walk func([]*schemaNode) *schemaNode
	walk = func(ns []*schemaNode) *schemaNode {
		for _, n := range ns {
			if n.Path == template {
				return n
			}
			if strings.HasPrefix(template, n.Path+"/") {
				if r := walk(n.Children); r != nil {
					return r
				}
			}
		}
		return nil
	}
	return walk(s.roots)
}

// resolve walks a concrete path segment by segment (literal children
// first, then a {param} child) as PVE's RESTHandler does.
func (s *Schema) resolve(path string) (*schemaNode, map[string]string) {
	segs := strings.Split(strings.Trim(path, "/"), "/")
	binds := map[string]string{}
	nodes := s.roots
	var cur *schemaNode
	for _, seg := range segs {
		if seg == "" {
			return nil, nil
		}
		var next *schemaNode
		for _, n := range nodes {
			if lastSeg(n.Path) == seg {
				next = n
				break
			}
		}
		if next == nil {
			for _, n := range nodes {
				l := lastSeg(n.Path)
				if strings.HasPrefix(l, "{") && strings.HasSuffix(l, "}") {
					next = n
					binds[l[1:len(l)-1]] = seg
					break
				}
			}
		}
		if next == nil {
			return nil, nil
		}
		cur, nodes = next, next.Children
	}
	return cur, binds
}

func lastSeg(p string) string { return p[strings.LastIndexByte(p, '/')+1:] }

// Lookup resolves a concrete path (relative to /api2/json) and method. It
// returns the template path, the bound path parameters and the method's
// schema; a path or method the schema lacks is PVE's 501.
func (s *Schema) Lookup(method, path string) (string, map[string]string, *Method, error) {
	n, binds := s.resolve(path)
	if n == nil || n.Info[method] == nil {
		return "", nil, nil, notImplemented(method, path)
	}
	return n.Path, binds, n.Info[method], nil
}

func notImplemented(method, path string) *APIError {
	return &APIError{Status: 501, Message: fmt.Sprintf("Method '%s %s' not implemented", method, path)}
}

// propFor finds the schema of a parameter name, mapping net0 to net[n].
var indexedKey = regexp.MustCompile(`^([a-z][a-z_-]*?)(\d+)$`)

func propFor(props map[string]*Prop, key string) *Prop {
	if p, ok := props[key]; ok {
		return p
	}
	if m := indexedKey.FindStringSubmatch(key); m != nil {
		return props[m[1]+"[n]"]
	}
	return nil
}

// ValidateParams checks request parameters (path parameters included)
// against a method's parameter schema and returns PVE's per-parameter
// error messages (empty when valid).
func ValidateParams(m *Method, params map[string]any) map[string]string {
	errs := map[string]string{}
	var props map[string]*Prop
	additional := false
	if m.Parameters != nil {
		props = m.Parameters.Properties
		additional = m.Parameters.additional()
	}
	keys := make([]string, 0, len(params))
	for k := range params {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		p := propFor(props, k)
		if p == nil {
			if !additional {
				errs[k] = "property is not defined in schema and the schema does not allow additional properties"
			}
			continue
		}
		checkProp(params[k], p, k, errs)
	}
	for k, p := range props {
		if bool(p.Optional) || strings.HasSuffix(k, "[n]") {
			continue
		}
		if _, ok := params[k]; !ok {
			errs[k] = "property is missing and it is not optional"
		}
	}
	return errs
}

func addError(errs map[string]string, path, msg string) {
	if path == "" {
		path = "_root"
	}
	if old, ok := errs[path]; ok {
		errs[path] = old + `\n` + msg
		return
	}
	errs[path] = msg
}

var (
	reInteger = regexp.MustCompile(`^[+-]?\d+$`)
	reNumber  = regexp.MustCompile(`^[+-]?(\d+\.\d+|\d+\.|\.\d+|\d+)([eE][+-]?\d+)?$`)
)

// scalarString renders a scalar request value as Perl would see it.
func scalarString(v any) (string, bool) {
	switch x := v.(type) {
	case string:
		return x, true
	case json.Number:
		return x.String(), true
	case float64:
		if x == math.Trunc(x) && math.Abs(x) < 1e15 {
			return strconv.FormatInt(int64(x), 10), true
		}
		return strconv.FormatFloat(x, 'f', -1, 64), true
	case int:
		return strconv.Itoa(x), true
	case int64:
		return strconv.FormatInt(x, 10), true
	case bool:
		if x {
			return "1", true
		}
		return "0", true
	}
	return "", false
}

// checkProp follows JSONSchema.pm check_prop/check_type for request values.
func checkProp(v any, p *Prop, path string, errs map[string]string) {
	p.init()
	if p.Alias != "" {
		return
	}
	if v == nil {
		if p.typ == "null" {
			return
		}
		if !p.Optional {
			addError(errs, path, "property is missing and it is not optional")
		}
		return
	}
	switch p.typ {
	case "", "any":
		return
	case "null":
		addError(errs, path, fmt.Sprintf("type check ('%s') failed - value is not null", p.typ))
		return
	case "array":
		arr, ok := v.([]any)
		if !ok {
			addError(errs, path, "type check ('array') failed")
			return
		}
		if p.Items != nil {
			for i, e := range arr {
				checkProp(e, p.Items, fmt.Sprintf("%s[%d]", path, i), errs)
			}
		}
		return
	case "object":
		obj, ok := v.(map[string]any)
		if !ok {
			addError(errs, path, "type check ('object') failed")
			return
		}
		checkObject(path, p.Properties, obj, p.additional(), errs)
		return
	}
	switch v.(type) {
	case []any:
		addError(errs, path, fmt.Sprintf("type check ('%s') failed - got ARRAY", p.typ))
		return
	case map[string]any:
		addError(errs, path, fmt.Sprintf("type check ('%s') failed - got HASH", p.typ))
		return
	case bool:
		if p.typ != "boolean" {
			// A JSON boolean is a reference in Perl.
			addError(errs, path, fmt.Sprintf("type check ('%s') failed - got JSON::PP::Boolean", p.typ))
			return
		}
		return
	}
	s, _ := scalarString(v)
	switch p.typ {
	case "boolean":
		if s != "1" && s != "0" {
			addError(errs, path, fmt.Sprintf("type check ('boolean') failed - got '%s'", s))
			return
		}
	case "integer":
		if !reInteger.MatchString(s) {
			addError(errs, path, fmt.Sprintf("type check ('integer') failed - got '%s'", s))
			return
		}
	case "number":
		if !reNumber.MatchString(s) {
			addError(errs, path, fmt.Sprintf("type check ('number') failed - got '%s'", s))
			return
		}
	}
	if p.formatObj != nil || p.formatName != "" {
		if err := checkFormat(p, s, path); err != "" {
			addError(errs, path, "invalid format - "+err)
			return
		}
	}
	if p.re != nil && !p.re.MatchString(s) {
		addError(errs, path, "value does not match the regex pattern")
		return
	}
	if p.MaxLength != nil && float64(len(s)) > float64(*p.MaxLength) {
		addError(errs, path, fmt.Sprintf("value may only be %d characters long", int(*p.MaxLength)))
		return
	}
	if p.MinLength != nil && float64(len(s)) < float64(*p.MinLength) {
		addError(errs, path, fmt.Sprintf("value must be at least %d characters long", int(*p.MinLength)))
		return
	}
	if reNumber.MatchString(s) {
		f, _ := strconv.ParseFloat(s, 64)
		if p.Maximum != nil && f > float64(*p.Maximum) {
			addError(errs, path, "value must have a maximum value of "+fmtNum(float64(*p.Maximum)))
			return
		}
		if p.Minimum != nil && f < float64(*p.Minimum) {
			addError(errs, path, "value must have a minimum value of "+fmtNum(float64(*p.Minimum)))
			return
		}
	}
	if len(p.Enum) > 0 {
		vals := make([]string, len(p.Enum))
		found := false
		for i, e := range p.Enum {
			vals[i] = fmt.Sprint(e)
			if vals[i] == s {
				found = true
			}
		}
		if !found {
			addError(errs, path, fmt.Sprintf("value '%s' does not have a value in the enumeration '%s'", s, strings.Join(vals, ", ")))
		}
	}
}

func fmtNum(f float64) string { return strconv.FormatFloat(f, 'f', -1, 64) }

func checkObject(path string, props map[string]*Prop, obj map[string]any, additional bool, errs map[string]string) {
	sub := func(k string) string {
		if path == "" {
			return k
		}
		return path + "." + k
	}
	for k, v := range obj {
		p := props[k]
		if p == nil {
			if !additional {
				addError(errs, sub(k), "property is not defined in schema and the schema does not allow additional properties")
			}
			continue
		}
		checkProp(v, p, sub(k), errs)
	}
	for k, p := range props {
		if _, ok := obj[k]; !ok && !bool(p.Optional) && p.Alias == "" {
			addError(errs, sub(k), "property is missing and it is not optional")
		}
	}
}

// Named formats the simulator checks (PVE registers many more; the rest
// are accepted unchecked).
var (
	reConfigID = regexp.MustCompile(`(?i)^[a-z][a-z0-9_-]+$`)
	reNodeName = regexp.MustCompile(`(?i)^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?$`)
	reDNSName  = regexp.MustCompile(`(?i)^(?:(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)\.)*(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)$`)
	reTag      = regexp.MustCompile(`(?i)^[a-z0-9_][a-z0-9_\-+.]*$`)
)

func checkFormat(p *Prop, s, path string) string {
	if p.formatObj != nil {
		return checkPropertyString(p.formatObj, s, path)
	}
	switch p.formatName {
	case "pve-configid", "pve-snapshot-name":
		if !reConfigID.MatchString(s) {
			return fmt.Sprintf("invalid configuration ID '%s'\n", s)
		}
	case "pve-node":
		if !reNodeName.MatchString(s) {
			return "value does not look like a valid node name\n"
		}
	case "dns-name":
		if !reDNSName.MatchString(s) {
			return "value does not look like a valid DNS name\n"
		}
	case "pve-tag-list":
		for _, t := range strings.FieldsFunc(s, func(r rune) bool { return r == ';' || r == ',' || r == ' ' }) {
			if !reTag.MatchString(t) {
				return "invalid characters in tag\n"
			}
		}
	}
	return ""
}

// checkPropertyString follows JSONSchema.pm parse_property_string.
func checkPropertyString(format map[string]*Prop, data, path string) string {
	res := map[string]any{}
	defaultKey := ""
	for _, part := range strings.Split(data, ",") {
		if strings.TrimSpace(part) == "" {
			continue
		}
		if k, v, ok := strings.Cut(part, "="); ok && k != "" && v != "" {
			if _, dup := res[k]; dup {
				return "duplicate key in comma-separated list property: " + k + "\n"
			}
			sch := format[k]
			if sch != nil && sch.Alias != "" {
				if sch.KeyAlias != "" {
					if _, dup := res[sch.KeyAlias]; dup {
						return fmt.Sprintf("key alias '%s' is already defined\n", sch.KeyAlias)
					}
					res[sch.KeyAlias] = k
				}
				k = sch.Alias
				sch = format[k]
				if _, dup := res[k]; dup {
					return fmt.Sprintf("key '%s' is already defined (via alias)\n", k)
				}
			}
			if sch == nil {
				return "invalid key in comma-separated list property: " + k + "\n"
			}
			res[k] = v
		} else if !strings.Contains(part, "=") {
			if defaultKey != "" {
				return "duplicate key in comma-separated list property: " + defaultKey + "\n"
			}
			for key, sch := range format {
				if sch.DefaultKey {
					defaultKey = key
					break
				}
			}
			if defaultKey == "" {
				return "value without key, but schema does not define a default key\n"
			}
			if _, dup := res[defaultKey]; dup {
				return "duplicate key in comma-separated list property: " + defaultKey + "\n"
			}
			res[defaultKey] = part
		} else {
			return "missing key in comma-separated list property\n"
		}
	}
	errs := map[string]string{}
	checkObject(path, format, res, false, errs)
	if len(errs) == 0 {
		return ""
	}
	msg := "format error\n"
	keys := make([]string, 0, len(errs))
	for k := range errs {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		msg += k + ": " + errs[k] + "\n"
	}
	return msg
}

// CheckReturns checks a response's data against the method's typed
// `returns` schema: types, enums and non-optional properties. Untyped
// parts are accepted. PVE answers /cluster/nextid with a string although
// the schema says integer; that one exception is accepted.
func CheckReturns(m *Method, data any) error {
	if m.Returns == nil {
		return nil
	}
	errs := map[string]string{}
	checkReturn(data, m.Returns, "", errs)
	if len(errs) == 0 {
		return nil
	}
	keys := make([]string, 0, len(errs))
	for k := range errs {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "%s: %s; ", k, errs[k])
	}
	return fmt.Errorf("response does not match the schema: %s", strings.TrimSuffix(b.String(), "; "))
}

func checkReturn(v any, p *Prop, path string, errs map[string]string) {
	p.init()
	if v == nil {
		if p.typ != "null" && !p.Optional && p.typ != "" && p.typ != "any" {
			addError(errs, path, "null where "+p.typ+" is required")
		}
		return
	}
	switch p.typ {
	case "", "any":
		return
	case "null":
		addError(errs, path, "value where null is required")
	case "array":
		arr, ok := v.([]any)
		if !ok {
			addError(errs, path, "not an array")
			return
		}
		if p.Items != nil {
			for i, e := range arr {
				checkReturn(e, p.Items, fmt.Sprintf("%s[%d]", path, i), errs)
			}
		}
	case "object":
		obj, ok := v.(map[string]any)
		if !ok {
			addError(errs, path, "not an object")
			return
		}
		for k, sp := range p.Properties {
			sp.init()
			ev, present := obj[k]
			if !present {
				if !sp.Optional {
					addError(errs, joinPath(path, k), "missing (not optional)")
				}
				continue
			}
			checkReturn(ev, sp, joinPath(path, k), errs)
		}
	case "string":
		if _, ok := v.(string); !ok {
			addError(errs, path, fmt.Sprintf("not a string: %v", v))
			return
		}
		if len(p.Enum) > 0 && !inEnum(p.Enum, v.(string)) {
			addError(errs, path, fmt.Sprintf("value %q not in enumeration", v))
		}
	case "integer", "number":
		n, ok := v.(float64)
		if jn, isJN := v.(json.Number); isJN {
			f, err := jn.Float64()
			n, ok = f, err == nil
		}
		if !ok {
			addError(errs, path, fmt.Sprintf("not a %s: %v", p.typ, v))
			return
		}
		if p.typ == "integer" && n != math.Trunc(n) {
			addError(errs, path, fmt.Sprintf("not an integer: %v", n))
		}
	case "boolean":
		switch x := v.(type) {
		case bool:
		case float64:
			if x != 0 && x != 1 {
				addError(errs, path, fmt.Sprintf("not a boolean: %v", v))
			}
		case json.Number:
			if x != "0" && x != "1" {
				addError(errs, path, fmt.Sprintf("not a boolean: %v", v))
			}
		default:
			addError(errs, path, fmt.Sprintf("not a boolean: %v", v))
		}
	}
}

func inEnum(enum []any, s string) bool {
	for _, e := range enum {
		if fmt.Sprint(e) == s {
			return true
		}
	}
	return false
}

func joinPath(a, b string) string {
	if a == "" {
		return b
	}
	return a + "." + b
}

// ValidateRequest checks one request (method, path relative to
// /api2/json, body and query parameters) against the schema as the
// simulator does when serving it: a 501 for an unknown path or method, a
// 400 with the per-parameter errors, nil when PVE would accept it. Use it
// to re-check Sim.Requests() against another schema (e.g. PVE 8's).
func (s *Schema) ValidateRequest(method, path string, params map[string]any) error {
	_, binds, m, err := s.Lookup(method, path)
	if err != nil {
		return err
	}
	all := make(map[string]any, len(params)+len(binds))
	for k, v := range params {
		all[k] = v
	}
	for k, v := range binds {
		all[k] = v
	}
	normalizeArrays(m, all)
	if errs := ValidateParams(m, all); len(errs) > 0 {
		return paramError(errs)
	}
	return nil
}
