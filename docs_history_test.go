package proxykit

import (
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// historyPhrases are phrases that describe a change rather than the
// product: docs and comments are read by someone who never saw an earlier
// version, and history belongs in commit messages.
var historyPhrases = []*regexp.Regexp{
	regexp.MustCompile(`(?i)\bthis round\b`),
	regexp.MustCompile(`(?i)\bprevious round\b`),
	regexp.MustCompile(`(?i)\blast round\b`),
	regexp.MustCompile(`(?i)\bpre-round\b`),
	regexp.MustCompile(`(?i)\bround [0-9]+\b`),
	regexp.MustCompile(`(?i)\bformerly\b`),
	regexp.MustCompile(`(?i)\bpreviously\b`),
	regexp.MustCompile(`(?i)kept for compatibility`),
	regexp.MustCompile(`(?i)\(was `),
	regexp.MustCompile(`(?i)\bissue #?[0-9]+\b`),
	// Design notes that are not in the repository.
	regexp.MustCompile(`\bDESIGN\.md\b`),
}

// machinePaths are absolute paths of a particular machine; commands in
// the docs are repository-relative.
var machinePaths = regexp.MustCompile(`(^|[\s("'=` + "`" + `])/(tmp|work|home)/`)

// TestDocsDescribeTheProduct: the README, docs/, BENCHMARKS.md, SECURITY.md
// and every comment in the module's Go files (tests and examples included)
// describe the product as it is, with no history phrases and no machine
// paths.
func TestDocsDescribeTheProduct(t *testing.T) {
	docs := []string{"README.md", "BENCHMARKS.md", "SECURITY.md"}
	more, err := filepath.Glob(filepath.Join("docs", "*.md"))
	require.NoError(t, err)
	docs = append(docs, more...)
	for _, name := range docs {
		b, err := os.ReadFile(name)
		require.NoError(t, err)
		for i, line := range strings.Split(string(b), "\n") {
			checkHistory(t, name, i+1, line)
		}
	}

	fset := token.NewFileSet()
	err = filepath.WalkDir(".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if p != "." && (strings.HasPrefix(d.Name(), ".") || d.Name() == "testdata") && d.Name() != ".ci" {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(p, ".go") || p == "docs_history_test.go" {
			return nil
		}
		f, err := parser.ParseFile(fset, p, nil, parser.ParseComments)
		if err != nil {
			return err
		}
		for _, g := range f.Comments {
			for _, c := range g.List {
				line := fset.Position(c.Slash).Line
				for i, text := range strings.Split(c.Text, "\n") {
					checkHistory(t, p, line+i, text)
				}
			}
		}
		return nil
	})
	require.NoError(t, err)
}

// checkHistory reports each history phrase and machine path in one line of
// file name.
func checkHistory(t *testing.T, name string, line int, text string) {
	t.Helper()
	for _, re := range historyPhrases {
		if m := re.FindString(text); m != "" {
			assert.Failf(t, "history in the docs", "%s:%d: %q: describe the product as it is\n\t%s", name, line, m, strings.TrimSpace(text))
		}
	}
	if m := machinePaths.FindString(text); m != "" {
		assert.Failf(t, "machine path in the docs", "%s:%d: %q: use a repository-relative path\n\t%s", name, line, strings.TrimSpace(m), strings.TrimSpace(text))
	}
}
