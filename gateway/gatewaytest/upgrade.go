package gatewaytest

import (
	"io"
	"net/http"
)

// EchoUpgrade returns a handler for an upstream that accepts an upgrade to
// the "echo" protocol (a stand-in for WebSocket): it answers 101 Switching
// Protocols on the hijacked connection and echoes every line it reads.
// With hangUp, it closes the connection right after the 101. A request
// without "Upgrade: echo" gets 426 Upgrade Required.
func EchoUpgrade(hangUp bool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "echo" {
			http.Error(w, "upgrade required", http.StatusUpgradeRequired)
			return
		}
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer c.Close()
		_, _ = io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
		if hangUp {
			return
		}
		for {
			line, err := brw.ReadString('\n')
			if err != nil {
				return
			}
			if _, err := io.WriteString(c, line); err != nil {
				return
			}
		}
	})
}
