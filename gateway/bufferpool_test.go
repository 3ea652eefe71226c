package gateway_test

import (
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/proxykit/proxykit/gateway"
)

func TestBufferPool(t *testing.T) {
	p := gateway.NewBufferPool(1024, 2)
	a, b, c := p.Get(), p.Get(), p.Get()
	assert.Len(t, a, 1024)
	p.Put(a)
	p.Put(b)
	p.Put(c) // over capacity: dropped
	p.Put(make([]byte, 10))
	assert.Len(t, p.Get(), 1024)
	assert.Len(t, p.Get(), 1024)
	allocs := testing.AllocsPerRun(100, func() { p.Put(p.Get()) })
	assert.Zero(t, allocs, "a warm pool does not allocate")
	d := gateway.NewBufferPool(0, 0)
	assert.Len(t, d.Get(), 32<<10, "ReverseProxy's own buffer size")
}
