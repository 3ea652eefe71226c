package gateway_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/proxykit/proxykit/gateway"
)

func TestTrail(t *testing.T) {
	var tr gateway.Trail
	assert.False(t, tr.Tried("a:1"))
	assert.Equal(t, "", tr.Last())
	for i := 0; i < 6; i++ { // beyond the inline capacity
		tr.Add(fmt.Sprintf("h%d:80", i))
	}
	assert.Equal(t, 6, tr.Len())
	assert.True(t, tr.Tried("h0:80"))
	assert.True(t, tr.Tried("h5:80"))
	assert.False(t, tr.Tried("h6:80"))
	assert.Equal(t, "h5:80", tr.Last())
	var nilTrail *gateway.Trail
	assert.False(t, nilTrail.Tried("x"))
	assert.Zero(t, nilTrail.Len())
	assert.Equal(t, "", nilTrail.Last())
}

func TestWithTrail(t *testing.T) {
	type key struct{}
	parent, cancel := context.WithTimeout(context.WithValue(context.Background(), key{}, "v"), time.Minute)
	defer cancel()
	assert.Nil(t, gateway.TrailFrom(parent))

	ctx, tr := gateway.WithTrail(parent)
	require.NotNil(t, tr)
	tr.Add("a:1")
	got := gateway.TrailFrom(ctx)
	assert.Same(t, tr, got)
	assert.True(t, got.Tried("a:1"))
	assert.Equal(t, "v", ctx.Value(key{}), "other values come from the parent")
	dl, ok := ctx.Deadline()
	assert.True(t, ok)
	assert.WithinDuration(t, time.Now().Add(time.Minute), dl, 5*time.Second)

	child, cancelChild := context.WithCancel(ctx)
	defer cancelChild()
	assert.Same(t, tr, gateway.TrailFrom(child), "visible from derived contexts")
	again, tr2 := gateway.WithTrail(child)
	assert.Same(t, tr, tr2, "one request, one Trail: an inner layer gets the outer one")
	assert.Equal(t, child, again)
	cancel()
	<-child.Done() // cancellation flows from the parent
}

// TestTrailConcurrent: the attempts of a hedged request record and read one
// Trail at once (run with -race).
func TestTrailConcurrent(t *testing.T) {
	ctx, tr := gateway.WithTrail(context.Background())
	hedge := gateway.TrailFrom(gateway.WithHedgeTrail(ctx, func(string) bool { return true }))
	var wg sync.WaitGroup
	for g, view := range []*gateway.Trail{tr, hedge} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 20 {
				h := fmt.Sprintf("g%d-%d:80", g, i)
				view.Add(h)
				assert.True(t, view.Tried(h))
				assert.Equal(t, h, view.Last(), "each view's Last is its own")
				_ = view.Len()
			}
		}()
	}
	wg.Wait()
	assert.Equal(t, 40, tr.Len())
	assert.Equal(t, 40, hedge.Len(), "one record")
	assert.True(t, tr.Tried("g1-19:80"))
	assert.Equal(t, "g0-19:80", tr.Last())
	assert.Equal(t, "g1-19:80", hedge.Last())
}

// TestWithHedgeTrail: a hedged attempt's first upstream is put to admit;
// refused, nothing of the attempt is recorded.
func TestWithHedgeTrail(t *testing.T) {
	ctx, tr := gateway.WithTrail(context.Background())
	tr.Add("a:80") // the first attempt, in flight

	var asked []string
	admit := func(tried bool) func(string) bool {
		return func(up string) bool {
			asked = append(asked, up)
			return !tried
		}
	}
	// Refused: the balancer picked the host in flight.
	view := gateway.TrailFrom(gateway.WithHedgeTrail(ctx, func(up string) bool {
		h := gateway.TrailFrom(ctx)
		return admit(h.Tried(up))(up)
	}))
	view.Add("a:80")
	view.Add("a:80") // asked once only
	assert.Equal(t, []string{"a:80"}, asked)
	assert.Equal(t, 1, tr.Len(), "a refused attempt records nothing")
	assert.Equal(t, "", view.Last())

	// Admitted: recorded in the request's record, named by the view.
	asked = nil
	view = gateway.TrailFrom(gateway.WithHedgeTrail(ctx, admit(false)))
	view.Add("b:80")
	view.Add("c:80") // a later record of the same attempt is not asked about
	assert.Equal(t, []string{"b:80"}, asked)
	assert.Equal(t, 3, tr.Len())
	assert.True(t, tr.Tried("b:80"))
	assert.Equal(t, "a:80", tr.Last(), "the request's own view names the first attempt's")
	assert.Equal(t, "c:80", view.Last())

	// Without a Trail in the parent, the view is a record of its own.
	lone := gateway.TrailFrom(gateway.WithHedgeTrail(context.Background(), func(string) bool { return true }))
	lone.Add("x:1")
	assert.Equal(t, 1, lone.Len())
}
