package errorpage_test

import (
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/proxykit/proxykit/errorpage"
	"github.com/proxykit/proxykit/gateway"
)

// planned is a maintenance failure's error, as package admission makes it.
type planned struct{ until time.Time }

func (p planned) Error() string           { return "in maintenance (secret detail)" }
func (p planned) PlannedUntil() time.Time { return p.until }

// TestOverloaded: a shed request gets a 503 whose page says the service is
// busy and the gateway turned the request away at once, with Retry-After.
func TestOverloaded(t *testing.T) {
	h := newHandler(t, errorpage.Options{Brand: errorpage.Brand{Name: "Acme"}})
	f := failure(gateway.ClassOverloaded)
	f.RetryAfter = time.Second
	w := serve(h.Wrap(fail(f)), "GET", "/", acceptChrome)
	body := w.Body.String()
	assert.Equal(t, 503, w.Code)
	ra, err := strconv.Atoi(w.Header().Get("Retry-After"))
	require.NoError(t, err)
	assert.True(t, ra >= 1 && ra <= 3, "Retry-After %d spread over [1, 3]", ra)
	assert.Contains(t, body, `<meta http-equiv="refresh" content="`+strconv.Itoa(ra)+`">`)
	assert.Contains(t, body, "<h1>The service is too busy right now</h1>")
	assert.Equal(t, [][3]string{
		{"ok", "Your browser", "Working"},
		{"ok", "Acme", "Working"},
		{"failed", "Service", "Busy"},
	}, chain(body))
	assert.Contains(t, body, "Acme turned your request away at once")
	assertNoLeak(t, body, f)

	p := decodeProblem(t, serve(h.Wrap(fail(f)), "GET", "/", acceptAxios).Body.Bytes())
	assert.Equal(t, 503, p.Status)
	assert.Equal(t, "overloaded", p.Class)
	assert.True(t, p.RetryAfter >= 1 && p.RetryAfter <= 3, "retry_after %d spread over [1, 3]", p.RetryAfter)
}

// TestMaintenancePlanned: a maintenance answer says it is planned and, when
// the end was announced, until when, in every format; without an announced
// end it says planned and nothing more.
func TestMaintenancePlanned(t *testing.T) {
	h := newHandler(t, errorpage.Options{Brand: errorpage.Brand{Name: "Acme"}})
	until := fixedNow.Add(90*time.Minute + 20*time.Second) // 16:39:46 → shown as 16:40
	f := gateway.NewFailure(gateway.ClassMaintenance, "", planned{until})
	f.RetryAfter = until.Sub(fixedNow)

	w := serve(h.Wrap(fail(f)), "GET", "/", acceptChrome)
	body := w.Body.String()
	assert.Equal(t, 503, w.Code)
	assert.Equal(t, "5420", w.Header().Get("Retry-After"))
	assert.Contains(t, body, "<h1>We&#39;re down for planned maintenance</h1>")
	assert.Contains(t, body, "It is planned to end at 2025-03-14 16:40 UTC.")
	assert.Contains(t, body, `This is planned maintenance, expected to end at <strong><time datetime="2025-03-14T16:40:00Z">2025-03-14 16:40 UTC</time></strong>.`)
	assert.Equal(t, [][3]string{
		{"ok", "Your browser", "Working"},
		{"ok", "Acme", "Working"},
		{"failed", "Service", "Planned maintenance"},
	}, chain(body))
	assert.Contains(t, body, "down for planned maintenance; Acme is answering in its place")
	assert.NotContains(t, body, "secret")

	raw := serve(h.Wrap(fail(f)), "GET", "/", acceptAxios).Body.Bytes()
	var doc map[string]any
	require.NoError(t, json.Unmarshal(raw, &doc))
	assert.Equal(t, "maintenance", doc["class"])
	assert.Equal(t, "2025-03-14T16:40:00Z", doc["until"])
	assert.Contains(t, doc["detail"], "planned to end at 2025-03-14 16:40 UTC")

	text := serve(h.Wrap(fail(f)), "GET", "/", "text/plain").Body.String()
	assert.Contains(t, text, "This is planned maintenance, expected to end at 2025-03-14 16:40 UTC.\n")

	// No announced end: planned, no time.
	f = gateway.NewFailure(gateway.ClassMaintenance, "", planned{})
	f.RetryAfter = time.Minute
	body = serve(h.Wrap(fail(f)), "GET", "/", acceptChrome).Body.String()
	assert.Contains(t, body, "This is planned maintenance. Nothing is wrong with your request.")
	assert.NotContains(t, body, "planned to end")
	raw = serve(h.Wrap(fail(f)), "GET", "/", acceptAxios).Body.Bytes()
	doc = nil
	require.NoError(t, json.Unmarshal(raw, &doc))
	assert.NotContains(t, doc, "until")
	assert.True(t, strings.HasPrefix(serve(h.Wrap(fail(f)), "GET", "/", "text/plain").Body.String(), "503 Service Unavailable\n"))
}
