package errorpage

import (
	"crypto/sha256"
	_ "embed"
	"encoding/base64"
	"fmt"
	"html/template"
	"math"
	"net/mail"
	"net/url"
	"strconv"
	"strings"
)

// Brand is how the built-in page presents the site. Every field is
// optional; the zero Brand gives a neutral page.
type Brand struct {
	// Name is the site's or product's name, shown in the page header, the
	// title and the chain's gateway hop. Default: no header, and
	// "Gateway" in the chain.
	Name string
	// LogoURL is a logo shown in the header at up to 40 px high: a
	// data:image/… URI (recommended: it costs no request) or an absolute
	// https:// URL (the browser then fetches it, and the
	// Content-Security-Policy allows that origin). Any other value is a
	// constructor error: a relative URL would ask the failing site itself
	// for the image.
	LogoURL string
	// LogoSVG is inline SVG markup shown in the header instead of LogoURL.
	// It is inserted as is: it must come from the operator, never from a
	// request. Give the <svg> a height or a viewBox.
	LogoSVG template.HTML
	// Accent is the accent colour for links and the header stripe in light
	// mode, as "#rgb" or "#rrggbb". Default "#0969da". It is darkened if
	// needed so that links keep a contrast of at least 4.5:1.
	Accent string
	// AccentDark is the accent colour in dark mode. Default: Accent,
	// lightened until it has a contrast of 4.5:1 on the dark background.
	AccentDark string
	// SupportURL is where visitors get help: an https://, http:// or
	// mailto: URL. Default: none.
	SupportURL string
	// SupportEmail is a support address; the page links to it with a
	// subject quoting the status and request ID. Used when SupportURL is
	// empty. Default: none.
	SupportEmail string
	// StatusPageURL is the service's status page, an https:// or http://
	// URL. Default: none.
	StatusPageURL string
}

const (
	defaultAccent = "#0969da"
	bgLight       = "#ffffff" // the card behind links, light mode
	bgDark        = "#161b22" // the card behind links, dark mode
	minContrast   = 4.5
)

//go:embed templates/style.css
var styleTemplate string

// resolvedBrand is a validated Brand and what the handler derives from it.
type resolvedBrand struct {
	Brand
	gatewayName string
	logo        template.URL
	style       template.CSS
	styleHash   string // CSP source for the built-in <style>
	imgSrc      string // CSP source for the logo, or ""
}

func resolveBrand(b Brand) (resolvedBrand, error) {
	r := resolvedBrand{Brand: b, gatewayName: b.Name}
	if r.gatewayName == "" {
		r.gatewayName = "Gateway"
	}
	if b.LogoURL != "" {
		src, err := checkLogo(b.LogoURL)
		if err != nil {
			return r, err
		}
		r.logo, r.imgSrc = template.URL(b.LogoURL), src
	}
	for _, u := range []struct{ name, v string }{{"SupportURL", b.SupportURL}, {"StatusPageURL", b.StatusPageURL}} {
		if err := checkLink(u.name, u.v); err != nil {
			return r, err
		}
	}
	if b.SupportEmail != "" {
		a, err := mail.ParseAddress(b.SupportEmail)
		if err != nil || a.Address != b.SupportEmail {
			return r, fmt.Errorf("errorpage: Brand.SupportEmail %q is not a bare e-mail address", b.SupportEmail)
		}
	}

	accent := b.Accent
	if accent == "" {
		accent = defaultAccent
	}
	light, err := parseHex("Accent", accent)
	if err != nil {
		return r, err
	}
	dark := light
	if b.AccentDark != "" {
		if dark, err = parseHex("AccentDark", b.AccentDark); err != nil {
			return r, err
		}
	}
	bl, _ := parseHex("", bgLight)
	bd, _ := parseHex("", bgDark)
	light = ensureContrast(light, bl, rgb{0, 0, 0})
	dark = ensureContrast(dark, bd, rgb{1, 1, 1})
	r.Accent, r.AccentDark = light.hex(), dark.hex()

	css := strings.NewReplacer(
		"$accent-dark", r.AccentDark,
		"$accent", r.Accent,
	).Replace(styleTemplate)
	r.style = template.CSS(css)
	sum := sha256.Sum256([]byte(css))
	r.styleHash = "'sha256-" + base64.StdEncoding.EncodeToString(sum[:]) + "'"
	return r, nil
}

// checkLogo validates a logo URL and returns the CSP img-src source that
// admits it.
func checkLogo(v string) (string, error) {
	if strings.HasPrefix(v, "data:image/") {
		return "data:", nil
	}
	u, err := url.Parse(v)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return "", fmt.Errorf("errorpage: Brand.LogoURL must be a data:image/ URI or an absolute http(s) URL, not %q", v)
	}
	return u.Scheme + "://" + u.Host, nil
}

func checkLink(name, v string) error {
	if v == "" {
		return nil
	}
	u, err := url.Parse(v)
	if err == nil {
		switch {
		case (u.Scheme == "https" || u.Scheme == "http") && u.Host != "":
			return nil
		case u.Scheme == "mailto" && name == "SupportURL" && u.Opaque != "":
			return nil
		}
	}
	return fmt.Errorf("errorpage: Brand.%s must be an absolute http(s) URL, not %q", name, v)
}

// mailto returns a mailto: URL for addr with the given subject (RFC 6068).
func mailto(addr, subject string) template.URL {
	q := strings.ReplaceAll(url.QueryEscape(subject), "+", "%20")
	return template.URL("mailto:" + addr + "?subject=" + q)
}

// rgb is a colour with components in 0…1 (sRGB, gamma-encoded).
type rgb struct{ r, g, b float64 }

func parseHex(name, s string) (rgb, error) {
	bad := fmt.Errorf("errorpage: Brand.%s must be a colour like #0969da or #09d, not %q", name, s)
	if len(s) != 4 && len(s) != 7 || s[0] != '#' {
		return rgb{}, bad
	}
	h := s[1:]
	if len(h) == 3 {
		h = string([]byte{h[0], h[0], h[1], h[1], h[2], h[2]})
	}
	n, err := strconv.ParseUint(h, 16, 32)
	if err != nil {
		return rgb{}, bad
	}
	return rgb{float64(n>>16) / 255, float64(n>>8&0xff) / 255, float64(n&0xff) / 255}, nil
}

func (c rgb) hex() string {
	to := func(v float64) uint64 { return uint64(math.Round(math.Max(0, math.Min(1, v)) * 255)) }
	return fmt.Sprintf("#%02x%02x%02x", to(c.r), to(c.g), to(c.b))
}

// luminance is WCAG 2's relative luminance.
func (c rgb) luminance() float64 {
	lin := func(v float64) float64 {
		if v <= 0.04045 {
			return v / 12.92
		}
		return math.Pow((v+0.055)/1.055, 2.4)
	}
	return 0.2126*lin(c.r) + 0.7152*lin(c.g) + 0.0722*lin(c.b)
}

// contrast is WCAG 2's contrast ratio, 1…21.
func contrast(a, b rgb) float64 {
	la, lb := a.luminance(), b.luminance()
	if la < lb {
		la, lb = lb, la
	}
	return (la + 0.05) / (lb + 0.05)
}

// ensureContrast mixes c toward toward in small steps until it has at
// least minContrast against bg.
func ensureContrast(c, bg, toward rgb) rgb {
	for i := 0; i < 40 && contrast(c, bg) < minContrast; i++ {
		c = rgb{c.r + (toward.r-c.r)*0.1, c.g + (toward.g-c.g)*0.1, c.b + (toward.b-c.b)*0.1}
		c, _ = parseHex("", c.hex()) // judge the colour that will be written
	}
	return c
}
