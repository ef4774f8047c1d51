package messages

import (
	"fmt"
	"reflect"
	"strings"
	"unicode/utf8"

	"github.com/subbus/subbus/internal/drivers"
)

// checkEncoding rejects a request body that encoding/json would silently
// rewrite: bytes that are not valid UTF-8, and \u escapes of a lone UTF-16
// surrogate. The decoder turns both into U+FFFD, so a name, environment
// variable, command or label would reach the substrate different from
// what was sent. RFC 8259 requires JSON text to be UTF-8; a U+FFFD sent as
// such (its UTF-8 bytes or \ufffd) is a real character and is kept.
func checkEncoding(data []byte) error {
	if !utf8.Valid(data) {
		off := 0
		for off < len(data) {
			r, n := utf8.DecodeRune(data[off:])
			if r == utf8.RuneError && n <= 1 {
				break
			}
			off += n
		}
		return drivers.Errorf(drivers.InvalidArgument,
			"body: invalid UTF-8 at byte %d: strings must be valid UTF-8 (nothing is rewritten)", off)
	}
	// A backslash only occurs inside strings in valid JSON (anything else
	// fails to decode anyway), so escapes can be found without tracking
	// strings.
	for i := 0; i < len(data); i++ {
		if data[i] != '\\' || i+1 >= len(data) {
			continue
		}
		if data[i+1] != 'u' {
			i++ // \" \\ \n …: skip the escaped character
			continue
		}
		hi, ok := hex4(data, i+2)
		if !ok {
			i++
			continue // malformed: the decoder reports it
		}
		switch {
		case hi >= 0xD800 && hi <= 0xDBFF:
			if i+7 < len(data) && data[i+6] == '\\' && data[i+7] == 'u' {
				if lo, ok := hex4(data, i+8); ok && lo >= 0xDC00 && lo <= 0xDFFF {
					i += 11 // a valid pair
					continue
				}
			}
			return drivers.Errorf(drivers.InvalidArgument,
				"body: \\u%04x at byte %d is a lone UTF-16 surrogate, not a character (nothing is rewritten)", hi, i)
		case hi >= 0xDC00 && hi <= 0xDFFF:
			return drivers.Errorf(drivers.InvalidArgument,
				"body: \\u%04x at byte %d is a lone UTF-16 surrogate, not a character (nothing is rewritten)", hi, i)
		}
		i += 5
	}
	return nil
}

// hex4 parses the 4 hex digits at data[i:].
func hex4(data []byte, i int) (rune, bool) {
	if i+4 > len(data) {
		return 0, false
	}
	var r rune
	for _, c := range data[i : i+4] {
		switch {
		case c >= '0' && c <= '9':
			r = r<<4 | rune(c-'0')
		case c >= 'a' && c <= 'f':
			r = r<<4 | rune(c-'a'+10)
		case c >= 'A' && c <= 'F':
			r = r<<4 | rune(c-'A'+10)
		default:
			return 0, false
		}
	}
	return r, true
}

// CheckUTF8 reports the first string in v (a request value: structs,
// pointers, slices, maps, strings) that is not valid UTF-8, as
// invalid_argument naming its path. Clients call it before encoding:
// encoding/json would otherwise send such a string as U+FFFD, which the
// worker could not tell from a real one.
func CheckUTF8(v any) error {
	if p, bad := badUTF8(reflect.ValueOf(v), "request"); bad {
		return drivers.Errorf(drivers.InvalidArgument, "%s: is not valid UTF-8 (nothing is rewritten)", p)
	}
	return nil
}

func badUTF8(v reflect.Value, path string) (string, bool) {
	switch v.Kind() {
	case reflect.String:
		return path, !utf8.ValidString(v.String())
	case reflect.Pointer, reflect.Interface:
		if v.IsNil() {
			return "", false
		}
		return badUTF8(v.Elem(), path)
	case reflect.Struct:
		t := v.Type()
		for i := range v.NumField() {
			if !t.Field(i).IsExported() {
				continue
			}
			name := t.Field(i).Name
			if tag, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ","); tag != "" && tag != "-" {
				name = tag
			}
			if p, bad := badUTF8(v.Field(i), path+"."+name); bad {
				return p, true
			}
		}
	case reflect.Slice, reflect.Array:
		if v.Type().Elem().Kind() == reflect.Uint8 {
			return "", false // bytes (base64 on the wire)
		}
		for i := range v.Len() {
			if p, bad := badUTF8(v.Index(i), fmt.Sprintf("%s[%d]", path, i)); bad {
				return p, true
			}
		}
	case reflect.Map:
		it := v.MapRange()
		for it.Next() {
			k := fmt.Sprint(it.Key().Interface())
			if p, bad := badUTF8(it.Key(), fmt.Sprintf("%s[%q]", path, k)); bad {
				return p, true
			}
			if p, bad := badUTF8(it.Value(), fmt.Sprintf("%s[%q]", path, k)); bad {
				return p, true
			}
		}
	}
	return "", false
}
