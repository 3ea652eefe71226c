// Command customtemplate serves proxykit error pages from custom templates
// embedded in the binary, in front of an upstream that is down:
//
//	go run ./examples/customtemplate
//	curl -H 'Accept: text/html' http://127.0.0.1:8090/
//
// templates/default.html is the page for every failure; templates/open.html
// uses it as its layout and overrides only its headline, for an open
// circuit breaker, by redefining the "headline" block. Each page is a
// template set of its own, so that {{define}} changes the open page only.
// The lookup is per class (open.html), then per status (503.html), then
// default.html, then the built-in page. Templates are parsed and tried when
// errorpage.New runs, with the data a visitor's page gets (Operator nil):
// a mistake fails at start-up, naming the file, not on the first failing
// request.
package main

import (
	"context"
	"embed"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/proxykit/proxykit/errorpage"
	"github.com/proxykit/proxykit/gateway"
)

//go:embed templates/*.html
var templateFiles embed.FS

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "customtemplate:", err)
		os.Exit(2)
	}
}

// newPages builds the error pages from the embedded templates.
func newPages(logger *slog.Logger) (*errorpage.Handler, error) {
	templates, err := fs.Sub(templateFiles, "templates")
	if err != nil {
		return nil, err
	}
	return errorpage.New(errorpage.Options{
		Brand:     errorpage.Brand{Name: "Trattoria", SupportEmail: "help@trattoria.example"},
		Templates: templates,
		Logger:    logger,
	})
}

// newHandler wraps a proxy to upstream in the custom error pages.
func newHandler(upstream *url.URL, logger *slog.Logger) (http.Handler, func(), error) {
	pages, err := newPages(logger)
	if err != nil {
		return nil, nil, err
	}
	transport := &gateway.Transport{}
	proxy := &httputil.ReverseProxy{
		Rewrite:      func(pr *httputil.ProxyRequest) { pr.SetURL(upstream) },
		Transport:    transport,
		ErrorHandler: gateway.NewErrorHandler(logger),
	}
	return gateway.RequestID(pages.Wrap(proxy)), transport.CloseIdleConnections, nil
}

func run(ctx context.Context, args []string, out io.Writer) error {
	fset := flag.NewFlagSet("customtemplate", flag.ContinueOnError)
	fset.SetOutput(io.Discard)
	listen := fset.String("listen", "127.0.0.1:8090", "address to serve on")
	upstream := fset.String("upstream", "http://127.0.0.1:1", "upstream URL (default: a closed port)")
	if err := fset.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fset.SetOutput(out)
			fset.PrintDefaults()
			return nil
		}
		return err
	}
	u, err := url.Parse(*upstream)
	if err != nil || u.Host == "" {
		return fmt.Errorf("bad -upstream %q", *upstream)
	}
	h, cleanup, err := newHandler(u, slog.Default())
	if err != nil {
		return err
	}
	defer cleanup()
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	fmt.Fprintf(out, "listening on http://%s (upstream %s); try: curl -H 'Accept: text/html' http://%s/\n", ln.Addr(), u, ln.Addr())
	<-ctx.Done()
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return srv.Shutdown(sctx)
}
