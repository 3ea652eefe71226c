package gateway

import (
	"errors"
	"net/http"
)

// WrapModifyResponse returns a ReverseProxy ModifyResponse hook that runs
// fn and turns the error it returns, a rejection of the upstream's answer,
// into a [Failure] of class [ClassResponseRejected] naming the upstream
// that answered. ReverseProxy hands that error to its ErrorHandler, where
// an unwrapped one would be unrecognised ([ClassInternal]): counted against
// the host and retried, so that the upstream would answer the same request
// again for each attempt. Classified, the rejection is answered 502 once
// and logged at info level, as the policy decision it is. An error that
// already is or wraps a *Failure is returned unchanged; a nil fn gives nil.
// proxykit.New wraps a Config.Proxy's ModifyResponse with it.
func WrapModifyResponse(fn func(*http.Response) error) func(*http.Response) error {
	if fn == nil {
		return nil
	}
	return func(res *http.Response) error {
		err := fn(res)
		if err == nil {
			return nil
		}
		var f *Failure
		if errors.As(err, &f) {
			return err
		}
		var upstream string
		if res.Request != nil {
			upstream = UpstreamName(res.Request.URL)
		}
		f = NewFailure(ClassResponseRejected, upstream, err)
		f.Sent = true
		return f
	}
}
