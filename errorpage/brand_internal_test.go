package errorpage

import (
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// palette returns the colour variables of the light and the dark :root
// blocks of the rendered stylesheet.
func palette(t *testing.T, css string) (light, dark map[string]rgb) {
	t.Helper()
	lightCSS, darkCSS, ok := strings.Cut(css, "@media (prefers-color-scheme:dark)")
	require.True(t, ok)
	vars := regexp.MustCompile(`--([a-z-]+):(#[0-9a-f]{3,6})\b`)
	parse := func(s string) map[string]rgb {
		s, _, _ = strings.Cut(s, "}") // the :root block only
		m := map[string]rgb{}
		for _, v := range vars.FindAllStringSubmatch(s, -1) {
			c, err := parseHex(v[1], v[2])
			require.NoError(t, err)
			m[v[1]] = c
		}
		return m
	}
	return parse(lightCSS), parse(darkCSS)
}

// TestContrast: every text colour of the page has at least 4.5:1 against
// every background it is drawn on (WCAG 2 AA), and the status icons at
// least 3:1 (non-text), in light and dark mode, for the default accent and
// for accents that need adjusting.
func TestContrast(t *testing.T) {
	text := [][2]string{ // foreground, background
		{"fg", "card"}, {"fg", "bg"}, {"fg", "soft"},
		{"muted", "card"}, {"muted", "bg"}, {"muted", "soft"},
		{"bad", "card"}, {"bad", "soft"}, {"bad", "bad-bg"},
		{"accent", "card"},
	}
	icons := [][2]string{{"ok", "ok-bg"}, {"ok", "soft"}, {"bad", "bad-bg"}, {"idle", "soft"}}
	for _, b := range []Brand{{}, {Accent: "#fc0"}, {Accent: "#ffffff", AccentDark: "#000000"}, {Accent: "#123"}} {
		rb, err := resolveBrand(b)
		require.NoError(t, err)
		light, dark := palette(t, string(rb.style))
		for mode, pal := range map[string]map[string]rgb{"light": light, "dark": dark} {
			for _, p := range text {
				fg, bg := pal[p[0]], pal[p[1]]
				assert.GreaterOrEqual(t, contrast(fg, bg), 4.5, "%s mode, accent %q: %s on %s", mode, b.Accent, p[0], p[1])
			}
			for _, p := range icons {
				assert.GreaterOrEqual(t, contrast(pal[p[0]], pal[p[1]]), 3.0, "%s mode: icon %s on %s", mode, p[0], p[1])
			}
		}
	}
	rb, err := resolveBrand(Brand{})
	require.NoError(t, err)
	assert.Equal(t, defaultAccent, rb.Accent, "the default accent needs no adjustment")
}

func TestDurationText(t *testing.T) {
	for s, want := range map[int]string{0: "", 1: "1 second", 30: "30 seconds", 119: "119 seconds",
		120: "2 minutes", 121: "3 minutes", 7199: "120 minutes", 7200: "2 hours", 86400: "24 hours"} {
		assert.Equal(t, want, durationText(s), "%d", s)
	}
}

func TestClip(t *testing.T) {
	assert.Equal(t, "abc", clip("abc", 3))
	assert.Equal(t, "ab…", clip("abc", 2))
	assert.Equal(t, "…", clip("é", 1), "never cuts a rune in half")
}
