//go:build ignore

// Command exports counts a package's exported identifiers: top-level
// constants, variables, functions and types, plus the exported methods of
// exported types; with -fields, also their exported struct fields and
// interface methods. Test files are not counted. Reference figures
// (httputil 32, x/time/rate 28, gobreaker 29) are the count without fields.
//
//	go run .ci/exports.go ./gateway ./retry ...
package main

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

func main() {
	args := os.Args[1:]
	if len(args) > 0 && args[0] == "-fields" {
		withFields, args = true, args[1:]
	}
	for _, dir := range args {
		n, err := count(dir)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		fmt.Printf("%-28s %d\n", dir, n)
	}
}

var withFields bool

func count(dir string) (int, error) {
	fset := token.NewFileSet()
	pkgs, err := parser.ParseDir(fset, dir, func(fi os.FileInfo) bool {
		return !strings.HasSuffix(fi.Name(), "_test.go")
	}, 0)
	if err != nil {
		return 0, err
	}
	names := map[string]bool{}
	exportedTypes := map[string]bool{}
	for _, p := range pkgs {
		for _, f := range p.Files {
			for _, d := range f.Decls {
				if g, ok := d.(*ast.GenDecl); ok {
					for _, s := range g.Specs {
						if t, ok := s.(*ast.TypeSpec); ok && t.Name.IsExported() {
							exportedTypes[t.Name.Name] = true
						}
					}
				}
			}
		}
	}
	for _, p := range pkgs {
		for _, f := range p.Files {
			for _, d := range f.Decls {
				switch d := d.(type) {
				case *ast.FuncDecl:
					if !d.Name.IsExported() {
						continue
					}
					if d.Recv == nil {
						names[d.Name.Name] = true
						continue
					}
					recv := d.Recv.List[0].Type
					if s, ok := recv.(*ast.StarExpr); ok {
						recv = s.X
					}
					if id, ok := recv.(*ast.Ident); ok && exportedTypes[id.Name] {
						names[id.Name+"."+d.Name.Name] = true
					}
				case *ast.GenDecl:
					for _, s := range d.Specs {
						switch s := s.(type) {
						case *ast.ValueSpec:
							for _, n := range s.Names {
								if n.IsExported() {
									names[n.Name] = true
								}
							}
						case *ast.TypeSpec:
							if !s.Name.IsExported() {
								continue
							}
							names[s.Name.Name] = true
							var fields *ast.FieldList
							switch t := s.Type.(type) {
							case *ast.StructType:
								fields = t.Fields
							case *ast.InterfaceType:
								fields = t.Methods
							}
							if fields == nil || !withFields {
								continue
							}
							for _, fl := range fields.List {
								for _, n := range fl.Names {
									if n.IsExported() {
										names[s.Name.Name+"."+n.Name] = true
									}
								}
							}
						}
					}
				}
			}
		}
	}
	if os.Getenv("EXPORTS_LIST") != "" {
		l := make([]string, 0, len(names))
		for n := range names {
			l = append(l, n)
		}
		sort.Strings(l)
		fmt.Println(filepath.Base(dir)+":", strings.Join(l, " "))
	}
	return len(names), nil
}
