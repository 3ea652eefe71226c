package errorpage

import (
	"errors"
	"fmt"
	"html/template"
	"io"
	"io/fs"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"text/template/parse"
	"time"

	"github.com/proxykit/proxykit/gateway"
)

// customPages maps the name of each page file of Options.Templates
// ("open.html", "503.html", "default.html") to its template. Every page has
// a template set of its own, so a {{define}} in one page never changes
// another.
type customPages map[string]*template.Template

// customFile is one *.html file of Options.Templates.
type customFile struct {
	text string
	refs []string // the template names it calls with {{template}}, sorted
}

// parseCustom builds the custom pages from the *.html files at the root of
// fsys. A file named after a class, a status or "default" is a page (one
// lookup can return); any other file is a partial.
//
// The partials are parsed into one base set. Each page gets a clone of it,
// into which are parsed, in this order, the other pages it calls (directly
// or through other files, each after the pages it calls itself) and then
// the page itself, so that the nearest {{define}} wins and stays on that
// page. Each page is then executed as its requests will see it (see
// [Handler.checkPage]), which surfaces at construction html/template's
// escaping errors and mistakes such as a misspelt field.
func (h *Handler) parseCustom(fsys fs.FS) (customPages, error) {
	names, err := fs.Glob(fsys, "*.html")
	if err != nil {
		return nil, fmt.Errorf("errorpage: reading Options.Templates: %w", err)
	}
	if len(names) == 0 {
		return nil, errors.New("errorpage: Options.Templates has no *.html file at its root (for an embed.FS with a directory, pass fs.Sub(fsys, dir))")
	}
	files := make(map[string]*customFile, len(names))
	for _, name := range names {
		b, err := fs.ReadFile(fsys, name)
		if err != nil {
			return nil, fmt.Errorf("errorpage: reading Options.Templates: %w", err)
		}
		t, err := template.New(name).Parse(string(b))
		if err != nil {
			return nil, fmt.Errorf("errorpage: parsing Options.Templates: %w", err)
		}
		files[name] = &customFile{text: string(b), refs: references(t)}
	}

	if !slices.ContainsFunc(names, isPageTemplate) {
		return nil, noPageError(names)
	}

	base := template.New("")
	for _, name := range names {
		if !isPageTemplate(name) {
			if err := parseInto(base, name, files[name].text); err != nil {
				return nil, err
			}
		}
	}
	pages := make(customPages)
	for _, name := range names {
		if !isPageTemplate(name) {
			continue // a partial, checked through the pages that use it
		}
		set, err := base.Clone()
		if err != nil {
			return nil, fmt.Errorf("errorpage: template %s: %w", name, err) // cannot happen: base is never executed
		}
		for _, dep := range append(pageDeps(name, files), name) {
			if err := parseInto(set, dep, files[dep].text); err != nil {
				return nil, err
			}
		}
		t := set.Lookup(name)
		if err := h.checkPage(name, t); err != nil {
			return nil, err
		}
		pages[name] = t
	}
	return pages, nil
}

// parseInto parses text into set as the template name.
func parseInto(set *template.Template, name, text string) error {
	if _, err := set.New(name).Parse(text); err != nil {
		// Cannot happen: every file parsed on its own already.
		return fmt.Errorf("errorpage: parsing Options.Templates: %w", err)
	}
	return nil
}

// references returns the names that t and the templates it defines call
// with {{template}} or {{block}}, sorted.
func references(t *template.Template) []string {
	var refs []string
	var walk func(n parse.Node)
	walk = func(n parse.Node) {
		switch n := n.(type) {
		case *parse.ListNode:
			if n == nil {
				return
			}
			for _, c := range n.Nodes {
				walk(c)
			}
		case *parse.TemplateNode:
			refs = append(refs, n.Name)
		case *parse.IfNode:
			walk(n.List)
			walk(n.ElseList)
		case *parse.RangeNode:
			walk(n.List)
			walk(n.ElseList)
		case *parse.WithNode:
			walk(n.List)
			walk(n.ElseList)
		}
	}
	for _, d := range t.Templates() {
		if d.Tree != nil {
			walk(d.Tree.Root)
		}
	}
	slices.Sort(refs)
	return slices.Compact(refs)
}

// pageDeps returns the pages other than page that page calls, directly or
// through other files, each after the pages it calls itself.
func pageDeps(page string, files map[string]*customFile) []string {
	var deps []string
	seen := map[string]bool{page: true}
	var visit func(name string)
	visit = func(name string) {
		for _, ref := range files[name].refs {
			if _, ok := files[ref]; !ok || seen[ref] {
				continue // a {{define}}d name, or a file visited already
			}
			seen[ref] = true
			visit(ref)
			if isPageTemplate(ref) {
				deps = append(deps, ref) // partials are in the base set
			}
		}
	}
	visit(page)
	return deps
}

// noPageError is the constructor error for a template set in which no file
// is named for a page, so that lookup would never find one and every
// visitor would get the built-in page: the files would be silently unused.
func noPageError(names []string) error {
	classes := make([]string, 0, len(gateway.Classes()))
	for _, c := range gateway.Classes() {
		classes = append(classes, c.String())
	}
	var hint string
	for _, name := range names {
		if lower := strings.ToLower(name); isPageTemplate(lower) {
			hint = fmt.Sprintf(" (names are case-sensitive: rename %s to %s)", name, lower)
			break
		}
	}
	return fmt.Errorf("errorpage: Options.Templates has no page, only partials (%s)%s: "+
		"name a page \"default.html\", \"<status>.html\" (e.g. \"503.html\") or \"<class>.html\" "+
		"with class one of %s", strings.Join(names, ", "), hint, strings.Join(classes, ", "))
}

// isPageTemplate reports whether name is one that lookup can return.
func isPageTemplate(name string) bool {
	base, ok := strings.CutSuffix(name, ".html")
	if !ok {
		return false
	}
	if base == "default" {
		return true
	}
	if isStatusName(base) {
		return true
	}
	var c gateway.Class
	return c.UnmarshalText([]byte(base)) == nil
}

// isStatusName reports whether s is a three-digit status from 100 to 599.
func isStatusName(s string) bool {
	return len(s) == 3 && s[0] >= '1' && s[0] <= '5' && s[1] >= '0' && s[1] <= '9' && s[2] >= '0' && s[2] <= '9'
}

// checkPage executes page template t, named name, on the pages its requests
// get: the page with operator details, always (every field is set, so a
// misspelt field fails even before anyone turns Debug on), and, unless
// Options.Debug shows operator details to everyone, the page an untrusted
// visitor gets, whose Operator is nil.
func (h *Handler) checkPage(name string, t *template.Template) error {
	if err := t.Execute(io.Discard, h.samplePage(name, true)); err != nil {
		return fmt.Errorf("errorpage: template %s: %w", name, err)
	}
	if h.opts.Debug {
		return nil
	}
	if err := t.Execute(io.Discard, h.samplePage(name, false)); err != nil {
		return fmt.Errorf("errorpage: template %s fails for visitors: their Page.Operator is nil "+
			"(it is set only with Options.Debug or for requests Options.Trusted approves), "+
			"so read operator fields inside {{with .Operator}}…{{end}}: %w", name, err)
	}
	return nil
}

// samplePage is the page used to check the custom page template name at
// construction: for a failure of the class or status it is named after
// (refused for default.html), with every field set that a GET request can
// set, and Operator set if trusted.
func (h *Handler) samplePage(name string, trusted bool) *Page {
	base := strings.TrimSuffix(name, ".html")
	var c gateway.Class
	status := 0
	if c.UnmarshalText([]byte(base)) != nil {
		c = gateway.ClassRefused
		if isStatusName(base) {
			status, _ = strconv.Atoi(base)
			c = gateway.ClassInternal
			for _, k := range gateway.Classes() {
				if k.Status() == status {
					c = k
					break
				}
			}
		}
	}
	f := gateway.NewFailure(c, "127.0.0.1:1", errors.New("sample"))
	if status != 0 {
		f.Status = status
	}
	f.RetryAfter = time.Second
	f.Attempts = 2
	r, _ := http.NewRequest(http.MethodGet, "http://example.com/", nil)
	p := new(Page)
	h.buildPage(p, r, f, statusFor(f), "sample", trusted)
	return p
}
