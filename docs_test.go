package proxykit

import (
	"go/ast"
	"go/build"
	"go/doc/comment"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"unicode"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/proxykit/proxykit/gateway"
)

// modulePath is this module's import path, as go.mod names it.
const modulePath = "github.com/proxykit/proxykit"

// symbols are the exported identifiers of a package: "Name" for a
// top-level declaration, "Type.Name" for a method or a struct field or
// interface method.
type symbols map[string]bool

// goPackage is a package's non-test files, parsed with comments.
type goPackage struct {
	importPath string
	files      []*ast.File
}

// parseDir parses the non-test Go files of dir, or returns nil if it has
// none.
func parseDir(t *testing.T, fset *token.FileSet, dir, importPath string) *goPackage {
	t.Helper()
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	p := &goPackage{importPath: importPath}
	for _, e := range entries {
		name := e.Name()
		if e.IsDir() || !strings.HasSuffix(name, ".go") || strings.HasSuffix(name, "_test.go") {
			continue
		}
		if ok, err := build.Default.MatchFile(dir, name); err != nil || !ok {
			continue // another GOOS's file
		}
		f, err := parser.ParseFile(fset, filepath.Join(dir, name), nil, parser.ParseComments)
		require.NoError(t, err)
		p.files = append(p.files, f)
	}
	if len(p.files) == 0 {
		return nil
	}
	return p
}

// exported returns the exported identifiers of p.
func (p *goPackage) exported() symbols {
	s := symbols{}
	for _, f := range p.files {
		for _, d := range f.Decls {
			switch d := d.(type) {
			case *ast.FuncDecl:
				if d.Recv == nil {
					s[d.Name.Name] = true
				} else if recv := receiverName(d.Recv.List[0].Type); recv != "" {
					s[recv+"."+d.Name.Name] = true
				}
			case *ast.GenDecl:
				for _, spec := range d.Specs {
					switch spec := spec.(type) {
					case *ast.TypeSpec:
						s[spec.Name.Name] = true
						addMembers(s, spec.Name.Name, spec.Type)
					case *ast.ValueSpec:
						for _, n := range spec.Names {
							s[n.Name] = true
						}
					}
				}
			}
		}
	}
	for k := range s {
		if !ast.IsExported(k[strings.LastIndexByte(k, '.')+1:]) {
			delete(s, k)
		}
	}
	return s
}

func receiverName(e ast.Expr) string {
	switch e := e.(type) {
	case *ast.StarExpr:
		return receiverName(e.X)
	case *ast.IndexExpr:
		return receiverName(e.X)
	case *ast.IndexListExpr:
		return receiverName(e.X)
	case *ast.Ident:
		return e.Name
	}
	return ""
}

func addMembers(s symbols, typ string, e ast.Expr) {
	var fields *ast.FieldList
	switch e := e.(type) {
	case *ast.StructType:
		fields = e.Fields
	case *ast.InterfaceType:
		fields = e.Methods
	default:
		return
	}
	for _, f := range fields.List {
		for _, n := range f.Names {
			s[typ+"."+n.Name] = true
		}
		if len(f.Names) == 0 { // embedded: its name is the field's
			if n := receiverName(f.Type); n != "" {
				s[typ+"."+n] = true
			} else if sel, ok := f.Type.(*ast.SelectorExpr); ok {
				s[typ+"."+sel.Sel.Name] = true
			}
		}
	}
}

// docComments returns the doc comments of f: the package's, and those of
// declarations, specs and fields.
func docComments(f *ast.File) []*ast.CommentGroup {
	var docs []*ast.CommentGroup
	ast.Inspect(f, func(n ast.Node) bool {
		var d *ast.CommentGroup
		switch n := n.(type) {
		case *ast.File:
			d = n.Doc
		case *ast.GenDecl:
			d = n.Doc
		case *ast.FuncDecl:
			d = n.Doc
		case *ast.TypeSpec:
			d = n.Doc
		case *ast.ValueSpec:
			d = n.Doc
		case *ast.Field:
			d = n.Doc
		}
		if d != nil {
			docs = append(docs, d)
		}
		return true
	})
	return docs
}

// TestGodocLinks: every doc link ([Name], [Name.Method], [pkg.Name],
// [pkg.Name.Method]) in a doc comment of the module resolves to an
// exported identifier, of the package or of the one it names. A link that
// does not resolve is shown by go doc and pkgsite as plain text in
// brackets, silently.
func TestGodocLinks(t *testing.T) {
	fset := token.NewFileSet()
	packages := map[string]*goPackage{}
	require.NoError(t, filepath.WalkDir(".", func(dir string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return err
		}
		if base := d.Name(); dir != "." && (strings.HasPrefix(base, ".") || strings.HasPrefix(base, "_") || base == "testdata") {
			return filepath.SkipDir
		}
		importPath := modulePath
		if dir != "." {
			importPath = path.Join(modulePath, filepath.ToSlash(dir))
		}
		if p := parseDir(t, fset, dir, importPath); p != nil {
			packages[importPath] = p
		}
		return nil
	}))
	require.Contains(t, packages, modulePath+"/gateway")

	exports := map[string]symbols{}
	exportsOf := func(importPath string) symbols {
		if s, ok := exports[importPath]; ok {
			return s
		}
		p := packages[importPath]
		if p == nil {
			bp, err := build.Import(importPath, ".", build.FindOnly)
			if err == nil {
				p = parseDir(t, fset, bp.Dir, importPath)
			}
		}
		var s symbols
		if p != nil {
			s = p.exported()
		}
		exports[importPath] = s
		return s
	}

	var dangling []string
	for _, p := range packages {
		own := exportsOf(p.importPath)
		for _, f := range p.files {
			imports := map[string]string{} // package name as the file uses it → import path
			for _, im := range f.Imports {
				ip, _ := strconv.Unquote(im.Path.Value)
				name := path.Base(ip)
				if strings.HasPrefix(name, "v") && strings.Trim(name[1:], "0123456789") == "" {
					name = path.Base(path.Dir(ip)) // gobreaker/v2
				}
				if im.Name != nil {
					name = im.Name.Name
				}
				imports[name] = ip
			}
			parser := &comment.Parser{
				LookupPackage: func(name string) (string, bool) {
					if ip, ok := imports[name]; ok {
						return ip, true
					}
					if ip := modulePath + "/" + name; packages[ip] != nil {
						return ip, true // a sibling package, named by its path (gateway/pool)
					}
					if ip := modulePath + "/gateway/" + name; packages[ip] != nil {
						return ip, true
					}
					if _, err := build.Import(name, ".", build.FindOnly); err == nil && !strings.Contains(name, ".") {
						return name, true // a standard library package
					}
					return "", false
				},
				LookupSym: func(recv, name string) bool { return true }, // checked below
			}
			for _, cg := range docComments(f) {
				doc := parser.Parse(cg.Text())
				for _, link := range docLinks(doc) {
					if link.ImportPath == "" && !unicode.IsUpper([]rune(link.Name)[0]) && link.Recv == "" {
						continue // [word]: not a link
					}
					syms, sym := own, link.Name
					if link.Recv != "" {
						sym = link.Recv + "." + link.Name
					}
					if link.ImportPath != "" {
						syms = exportsOf(link.ImportPath)
						if syms == nil {
							continue // a package outside the build (not downloaded): not checked
						}
					}
					if !syms[sym] {
						dangling = append(dangling, fset.Position(cg.Pos()).String()+": ["+linkText(link)+"]")
					}
				}
			}
		}
	}
	assert.Empty(t, dangling, "doc links that resolve to nothing")
}

// docLinks returns the doc links of d.
func docLinks(d *comment.Doc) []*comment.DocLink {
	var links []*comment.DocLink
	var walk func(text []comment.Text)
	walk = func(text []comment.Text) {
		for _, x := range text {
			switch x := x.(type) {
			case *comment.DocLink:
				links = append(links, x)
			case *comment.Italic, *comment.Plain:
			case *comment.Link:
				walk(x.Text)
			}
		}
	}
	for _, b := range d.Content {
		switch b := b.(type) {
		case *comment.Paragraph:
			walk(b.Text)
		case *comment.Heading:
			walk(b.Text)
		case *comment.List:
			for _, it := range b.Items {
				for _, c := range it.Content {
					if p, ok := c.(*comment.Paragraph); ok {
						walk(p.Text)
					}
				}
			}
		}
	}
	return links
}

func linkText(l *comment.DocLink) string {
	s := l.Name
	if l.Recv != "" {
		s = l.Recv + "." + s
	}
	if l.ImportPath != "" {
		s = l.ImportPath + "." + s
	}
	return s
}

// TestDocCounts: a count of classes written in the docs is the number
// gateway.Classes returns, and the gateway package doc names every class.
func TestDocCounts(t *testing.T) {
	n := len(gateway.Classes())
	count := regexp.MustCompile(`(\d+)\s+(?:failure\s+)?(?:classes|\[Class\] values)`)
	for _, file := range []string{"README.md", "docs/ARCHITECTURE.md", "SECURITY.md", "BENCHMARKS.md", "gateway/doc.go", "gateway/class.go"} {
		b, err := os.ReadFile(file)
		require.NoError(t, err)
		for _, m := range count.FindAllStringSubmatch(string(b), -1) {
			assert.Equal(t, strconv.Itoa(n), m[1], "%s: %q, but gateway.Classes() has %d", file, m[0], n)
		}
	}
	b, err := os.ReadFile("gateway/doc.go")
	require.NoError(t, err)
	for _, c := range gateway.Classes() {
		assert.Regexp(t, `\b`+c.String()+`\b`, string(b), "the gateway package doc names class %s", c)
	}
}

// TestReadmeByHandIsExample: the README's by-hand wiring is the body of
// Example_byHand, verbatim, so that the snippet a newcomer copies is one
// that compiles, runs and is tested.
func TestReadmeByHandIsExample(t *testing.T) {
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, "example_test.go", nil, parser.ParseComments)
	require.NoError(t, err)
	src, err := os.ReadFile("example_test.go")
	require.NoError(t, err)
	var body string
	for _, d := range f.Decls {
		if fn, ok := d.(*ast.FuncDecl); ok && fn.Name.Name == "Example_byHand" {
			from, to := fset.Position(fn.Body.Lbrace).Offset+1, fset.Position(fn.Body.Rbrace).Offset
			body = string(src[from:to])
		}
	}
	require.NotEmpty(t, body, "Example_byHand in example_test.go")
	body, _, _ = strings.Cut(body, "\t// Output:") // the output check is the test's, not the snippet's
	var lines []string
	for _, l := range strings.Split(strings.Trim(body, "\n"), "\n") {
		lines = append(lines, strings.TrimPrefix(l, "\t"))
	}
	want := strings.TrimRight(strings.Join(lines, "\n"), "\n")

	readme, err := os.ReadFile("README.md")
	require.NoError(t, err)
	_, after, ok := strings.Cut(string(readme), "Or wire the layers by hand")
	require.True(t, ok, "the README's by-hand section")
	_, after, ok = strings.Cut(after, "```go\n")
	require.True(t, ok)
	snippet, _, ok := strings.Cut(after, "```")
	require.True(t, ok)
	assert.Equal(t, want, strings.TrimRight(snippet, "\n"), "README's by-hand snippet = Example_byHand's body")
}

// TestReadmeDemoFlags: every flag of examples/demo is in the README.
func TestReadmeDemoFlags(t *testing.T) {
	src, err := os.ReadFile("examples/demo/main.go")
	require.NoError(t, err)
	readme, err := os.ReadFile("README.md")
	require.NoError(t, err)
	flags := regexp.MustCompile(`fs\.(?:String|Bool|Int|Duration|Float64)\("([a-z-]+)"`).FindAllStringSubmatch(string(src), -1)
	require.NotEmpty(t, flags)
	for _, m := range flags {
		assert.Contains(t, string(readme), "-"+m[1], "the README tells the demo's flag -%s", m[1])
	}
}
