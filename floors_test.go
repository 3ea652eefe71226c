package proxykit

import (
	"go/parser"
	"go/token"
	"io/fs"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestGatewayFloor: the packages under gateway/ are the ground floor
// (docs/ARCHITECTURE.md, "Floors"): each imports no package of the module
// but gateway — its tests also gatewaytest, and an external test package
// its own package — so that nothing there depends on a layer above it.
func TestGatewayFloor(t *testing.T) {
	const module = "github.com/proxykit/proxykit"
	allowed := map[string]bool{module + "/gateway": true}
	fset := token.NewFileSet()
	files := 0
	err := filepath.WalkDir("gateway", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(p, ".go") {
			return err
		}
		f, err := parser.ParseFile(fset, p, nil, parser.ImportsOnly)
		if err != nil {
			return err
		}
		files++
		self := module + "/" + filepath.ToSlash(filepath.Dir(p))
		test := strings.HasSuffix(p, "_test.go")
		for _, imp := range f.Imports {
			ip, err := strconv.Unquote(imp.Path.Value)
			if err != nil {
				return err
			}
			if ip != module && !strings.HasPrefix(ip, module+"/") {
				continue // the standard library or a dependency
			}
			ok := allowed[ip] || ip == self ||
				(test && ip == module+"/gateway/gatewaytest")
			assert.True(t, ok, "%s imports %s: a package under gateway/ imports only gateway (tests also %s)",
				p, ip, path.Join(module, "gateway/gatewaytest"))
		}
		return nil
	})
	require.NoError(t, err)
	require.Greater(t, files, 20, "the gateway/ tree was read")
}
