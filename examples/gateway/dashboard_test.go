package main

import (
	"encoding/json"
	"io"
	"net/http"
	"os"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/proxykit/proxykit/gateway/gatewaytest"
)

// dashboardPath is the Grafana dashboard that ships with the examples.
const dashboardPath = "../grafana/proxykit.json"

// dashboard is the part of a Grafana dashboard the test reads.
type dashboard struct {
	Panels []struct {
		Title   string `json:"title"`
		Type    string `json:"type"`
		Targets []struct {
			Expr         string `json:"expr"`
			LegendFormat string `json:"legendFormat"`
		} `json:"targets"`
	} `json:"panels"`
	Templating struct {
		List []struct {
			Name  string          `json:"name"`
			Type  string          `json:"type"`
			Query json.RawMessage `json:"query"`
		} `json:"list"`
	} `json:"templating"`
}

var (
	// A metric selector: a name followed by its label matchers.
	selector = regexp.MustCompile(`([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}`)
	// A label matcher inside a selector.
	matcher = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*"`)
	// The labels of a by (…) or without (…) clause.
	grouping = regexp.MustCompile(`\b(?:by|without)\s*\(([^)]*)\)`)
	// label_values(metric, label) in a template variable.
	labelValues = regexp.MustCompile(`label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*,\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)`)
	// {{label}} in a legend.
	legendLabel = regexp.MustCompile(`\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}`)
)

// queried returns the metric names and label names the dashboard's
// queries use.
func queried(t *testing.T, d dashboard) (metrics, labels map[string][]string) {
	t.Helper()
	metrics, labels = map[string][]string{}, map[string][]string{}
	use := func(m map[string][]string, name, where string) { m[name] = append(m[name], where) }
	scan := func(expr, where string) {
		sels := selector.FindAllStringSubmatch(expr, -1)
		require.NotEmpty(t, sels, "%s: every metric in a query is written with its braces: %s", where, expr)
		for _, s := range sels {
			use(metrics, s[1], where)
			for _, m := range matcher.FindAllStringSubmatch(s[2], -1) {
				use(labels, m[1], where)
			}
		}
		for _, g := range grouping.FindAllStringSubmatch(expr, -1) {
			for _, l := range strings.Split(g[1], ",") {
				if l = strings.TrimSpace(l); l != "" {
					use(labels, l, where)
				}
			}
		}
	}
	queries := 0
	for _, p := range d.Panels {
		for _, tg := range p.Targets {
			queries++
			scan(tg.Expr, p.Title)
			for _, m := range legendLabel.FindAllStringSubmatch(tg.LegendFormat, -1) {
				use(labels, m[1], p.Title+" (legend)")
			}
		}
	}
	require.Greater(t, queries, 10, "the dashboard has its panels")
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		var q struct {
			Query string `json:"query"`
		}
		if json.Unmarshal(v.Query, &q) != nil {
			require.NoError(t, json.Unmarshal(v.Query, &q.Query), "variable %s", v.Name)
		}
		lv := labelValues.FindStringSubmatch(q.Query)
		require.NotNil(t, lv, "variable %s: label_values(metric, label): %q", v.Name, q.Query)
		use(metrics, lv[1], "variable "+v.Name)
		use(labels, lv[2], "variable "+v.Name)
	}
	return metrics, labels
}

// TestDashboardMatchesMetrics: every metric and label the Grafana
// dashboard queries is one the gateway's /metrics serves, after traffic
// that exercises every instrument: successes, retries, budget denials,
// breakers opening, requests answered without an upstream.
func TestDashboardMatchesMetrics(t *testing.T) {
	raw, err := os.ReadFile(dashboardPath)
	require.NoError(t, err)
	var d dashboard
	require.NoError(t, json.Unmarshal(raw, &d))
	metrics, labels := queried(t, d)

	ok := gatewaytest.NewHealthy(nil)
	defer ok.Close()
	dead := gatewaytest.NewServer(gatewaytest.Refused)
	defer dead.Close()
	g := start(t, "-metrics", "-upstream", ok.URL, "-upstream", dead.URL)
	client := &http.Client{Timeout: 10 * time.Second}
	defer client.CloseIdleConnections()
	send := func(n int) {
		for range n {
			res, err := client.Get(g.base + "/")
			require.NoError(t, err)
			_, _ = io.Copy(io.Discard, res.Body)
			res.Body.Close()
		}
	}
	send(10)
	require.NoError(t, ok.SetFault(gatewaytest.Refused)) // the whole pool down: breakers open
	var samples []sample
	require.Eventually(t, func() bool {
		send(5)
		samples = scrape(t, g.admin)
		return len(find(samples, "proxykit_requests_without_upstream_total", nil)) > 0 &&
			len(find(samples, "proxykit_breaker_transitions_total", nil)) > 0 &&
			len(find(samples, "proxykit_retries_total", nil)) > 0
	}, 20*time.Second, 10*time.Millisecond, "the pool goes out")

	served, servedLabels := map[string]bool{}, map[string]bool{}
	for _, s := range samples {
		served[s.name] = true
		for l := range s.labels {
			servedLabels[l] = true
		}
	}
	var missing []string
	for m, where := range metrics {
		if !served[m] {
			missing = append(missing, m+" (in "+strings.Join(where, ", ")+")")
		}
	}
	for l, where := range labels {
		if !servedLabels[l] {
			missing = append(missing, "label "+l+" (in "+strings.Join(where, ", ")+")")
		}
	}
	sort.Strings(missing)
	if assert.Empty(t, missing, "queried by the dashboard, not served by /metrics") {
		t.Logf("the dashboard queries %d metrics and %d labels, all served", len(metrics), len(labels))
	}
}
