package gateway

import "net/http"

// validRequestID is exported for the external tests only.
var ValidRequestID = validRequestID

// NewInterceptor returns an Interceptor writing to w and deciding with d,
// for the external tests.
func NewInterceptor(w http.ResponseWriter, d Decider) *Interceptor {
	i := new(Interceptor)
	i.Reset(w, d)
	return i
}

// RetryAfterSeconds and NewRequestID are exported for the external tests
// only.
var (
	RetryAfterSeconds = retryAfterSeconds
	NewRequestID      = newRequestID
)
