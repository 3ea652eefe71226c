package gatewaytest

import (
	"io"
	"time"
)

// SlowBody returns a request body that keeps moving slowly: n bytes of
// 'x', one every interval — the upload of a slow but live client, which a
// proxy must not mistake for a stalled one or charge to the upstream.
func SlowBody(n int, every time.Duration) io.Reader {
	return &slowBody{n: n, every: every}
}

type slowBody struct {
	n     int
	every time.Duration
}

func (b *slowBody) Read(p []byte) (int, error) {
	if b.n == 0 {
		return 0, io.EOF
	}
	if len(p) == 0 {
		return 0, nil
	}
	time.Sleep(b.every)
	p[0] = 'x'
	b.n--
	return 1, nil
}
