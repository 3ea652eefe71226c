package errorpage

import (
	"net/http"
	"strings"
)

// Format is the representation of an error response.
type Format uint8

// The formats, chosen by [Negotiate].
const (
	// FormatJSON is an RFC 9457 problem document, application/problem+json.
	// It is the default: API clients, curl and clients that send no Accept
	// header get it.
	FormatJSON Format = iota
	// FormatHTML is the error page, text/html. Only clients that ask for
	// text/html by name, ahead of JSON and plain text, get it: browsers do.
	FormatHTML
	// FormatText is a few lines of text/plain.
	FormatText
)

// String returns the format's media type.
func (f Format) String() string {
	switch f {
	case FormatHTML:
		return "text/html"
	case FormatText:
		return "text/plain"
	}
	return "application/problem+json"
}

// Bounds on the work Negotiate does. A browser's Accept header is under 200
// bytes with fewer than 10 ranges; anything beyond these bounds is ignored,
// so a hostile header costs at most a few microseconds.
const (
	maxAcceptBytes  = 4096
	maxAcceptRanges = 32
)

// Negotiate chooses the format for a request with the given header from its
// Accept field(s), with q-values (RFC 9110 §12.5.1):
//
//   - Each format gets the weight of the most specific range that matches
//     it: text/html (or application/xhtml+xml) for HTML;
//     application/problem+json, application/json or any application/*+json
//     for JSON; text/plain for text; then type/* and */*.
//   - HTML is chosen only when text/html is named explicitly and preferred:
//     it weighs more than JSON and text, or as much as those of them that
//     only a wildcard matched. A browser's "text/html,…,*/*;q=0.8" and
//     "text/html, */*" get the page; "*/*" (curl), "text/html,
//     application/json" and "application/json, text/plain, */*" (axios)
//     get JSON.
//   - Otherwise the heavier of JSON and text wins; on a tie, a format named
//     explicitly beats one matched by a wildcard, then JSON beats text.
//   - No Accept header, an empty or malformed one, or one that accepts none
//     of the formats (every weight 0, or only image/png) yields JSON: an
//     error response is never a 406.
//
// Malformed ranges and parameters are skipped, never fatal. Only the first
// 4096 bytes and 32 ranges are read.
func Negotiate(h http.Header) Format {
	return negotiate(h["Accept"])
}

// weight is a q-value in thousandths (0…1000), or -1 when no range matched.
type weight int16

// match is the best range seen so far for one format.
type match struct {
	q        weight
	specific uint8 // 0 none, 1 */*, 2 type/*, 3 named
}

func (m *match) offer(q weight, specific uint8) {
	// The most specific range decides; among equally specific ranges (say
	// "application/json;q=0.2, application/problem+json"), the heavier.
	if specific > m.specific || (specific == m.specific && q > m.q) {
		m.q, m.specific = q, specific
	}
}

// beats reports whether m, a named match, outweighs o, or weighs the same
// while o was only matched by a wildcard.
func (m match) beats(o match) bool {
	mq, oq := m.weight(), o.weight()
	return mq > oq || (mq == oq && o.specific < 3)
}

func (m match) weight() weight {
	if m.specific == 0 {
		return -1
	}
	return m.q
}

func negotiate(values []string) Format {
	var html, json, text match
	budget, ranges := maxAcceptBytes, 0
	for _, v := range values {
		if budget <= 0 || ranges >= maxAcceptRanges {
			break
		}
		if len(v) > budget {
			v = v[:budget]
		}
		budget -= len(v) + 1 // +1: empty lines count too
		for v != "" && ranges < maxAcceptRanges {
			var r string
			r, v, _ = strings.Cut(v, ",")
			mt, params, _ := strings.Cut(r, ";")
			mt = trimOWS(mt)
			if mt == "" {
				continue
			}
			ranges++
			typ, sub, ok := strings.Cut(mt, "/")
			if !ok || typ == "" || sub == "" {
				continue
			}
			q, ok := parseQParam(params)
			if !ok {
				continue
			}
			switch {
			case typ == "*":
				if sub == "*" {
					html.offer(q, 1)
					json.offer(q, 1)
					text.offer(q, 1)
				}
			case strings.EqualFold(typ, "text"):
				switch {
				case sub == "*":
					html.offer(q, 2)
					text.offer(q, 2)
				case strings.EqualFold(sub, "html"):
					html.offer(q, 3)
				case strings.EqualFold(sub, "plain"):
					text.offer(q, 3)
				}
			case strings.EqualFold(typ, "application"):
				switch {
				case sub == "*":
					json.offer(q, 2)
				case strings.EqualFold(sub, "json"), hasSuffixFold(sub, "+json"):
					json.offer(q, 3)
				case strings.EqualFold(sub, "xhtml+xml"):
					html.offer(q, 3)
				}
			}
		}
	}
	hq, jq, tq := html.weight(), json.weight(), text.weight()
	if html.specific == 3 && hq > 0 && html.beats(json) && html.beats(text) {
		return FormatHTML
	}
	switch {
	case tq <= 0 || tq < jq:
		return FormatJSON
	case tq > jq:
		return FormatText
	case text.specific == 3 && json.specific < 3:
		return FormatText // "text/plain, */*"
	}
	return FormatJSON
}

// parseQParam finds the q parameter among a range's ";"-separated
// parameters. A range without one weighs 1; one with an invalid q is
// reported !ok and skipped.
func parseQParam(params string) (weight, bool) {
	for params != "" {
		var p string
		p, params, _ = strings.Cut(params, ";")
		name, val, _ := strings.Cut(p, "=")
		if n := trimOWS(name); len(n) == 1 && (n[0] == 'q' || n[0] == 'Q') {
			return parseQ(trimOWS(val))
		}
	}
	return 1000, true
}

// parseQ parses a qvalue: "0" or "1" followed by up to three decimals
// (RFC 9110 §12.4.2), "0.8" → 800.
func parseQ(s string) (weight, bool) {
	if s == "" || len(s) > 5 || (s[0] != '0' && s[0] != '1') {
		return 0, false
	}
	q := weight(s[0]-'0') * 1000
	if len(s) == 1 {
		return q, true
	}
	if s[1] != '.' {
		return 0, false
	}
	scale := weight(100)
	for i := 2; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		q += weight(c-'0') * scale
		scale /= 10
	}
	if q > 1000 {
		return 0, false
	}
	return q, true
}

// trimOWS trims optional whitespace (spaces and tabs) from both ends.
func trimOWS(s string) string {
	for s != "" && (s[0] == ' ' || s[0] == '\t') {
		s = s[1:]
	}
	for s != "" && (s[len(s)-1] == ' ' || s[len(s)-1] == '\t') {
		s = s[:len(s)-1]
	}
	return s
}

func hasSuffixFold(s, suffix string) bool {
	return len(s) >= len(suffix) && strings.EqualFold(s[len(s)-len(suffix):], suffix)
}
