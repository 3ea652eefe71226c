package gateway_test

import (
	"context"
	"fmt"
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
	tr.Reset()
	assert.Zero(t, tr.Len())
	var nilTrail *gateway.Trail
	assert.False(t, nilTrail.Tried("x"))
}

func TestTrailContext(t *testing.T) {
	type key struct{}
	parent, cancel := context.WithTimeout(context.WithValue(context.Background(), key{}, "v"), time.Minute)
	defer cancel()
	assert.Nil(t, gateway.TrailFrom(parent))

	var tc gateway.TrailContext
	tc.Init(parent)
	tc.Trail().Add("a:1")
	got := gateway.TrailFrom(&tc)
	require.NotNil(t, got)
	assert.True(t, got.Tried("a:1"))
	assert.Equal(t, "v", tc.Value(key{}), "other values come from the parent")
	dl, ok := tc.Deadline()
	assert.True(t, ok)
	assert.WithinDuration(t, time.Now().Add(time.Minute), dl, 5*time.Second)

	child, cancelChild := context.WithCancel(&tc)
	defer cancelChild()
	assert.Same(t, got, gateway.TrailFrom(child), "visible from derived contexts")
	cancel()
	<-child.Done() // cancellation flows from the parent through the TrailContext

	var own gateway.Trail
	ctx := gateway.WithTrail(context.Background(), &own)
	assert.Same(t, &own, gateway.TrailFrom(ctx))
}
