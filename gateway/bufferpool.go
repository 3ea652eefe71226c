package gateway

// BufferPool is an httputil.BufferPool with a bounded free list. Without a
// BufferPool, ReverseProxy allocates a 32 KiB buffer for every response it
// copies, which dominates its allocation rate and GC work.
//
// Unlike a sync.Pool, a BufferPool never allocates to return a buffer and
// keeps at most its capacity of idle buffers, so its memory is bounded:
// capacity × buffer size. A BufferPool is safe for concurrent use.
type BufferPool struct {
	free chan []byte
	size int
}

// Defaults of NewBufferPool.
const (
	defaultBufferSize     = 32 << 10 // ReverseProxy's own buffer size
	defaultBufferPoolSize = 256      // idle buffers kept: 8 MiB at 32 KiB
)

// NewBufferPool returns a BufferPool of buffers of size bytes keeping at
// most idle of them. Zero or negative values take the defaults (32 KiB
// buffers, 256 idle).
func NewBufferPool(size, idle int) *BufferPool {
	if size <= 0 {
		size = defaultBufferSize
	}
	if idle <= 0 {
		idle = defaultBufferPoolSize
	}
	return &BufferPool{free: make(chan []byte, idle), size: size}
}

// Get returns a buffer of the pool's size.
func (p *BufferPool) Get() []byte {
	select {
	case b := <-p.free:
		return b
	default:
		return make([]byte, p.size)
	}
}

// Put returns b to the pool; it is dropped if the pool is full or b is not
// of the pool's size.
func (p *BufferPool) Put(b []byte) {
	if cap(b) != p.size {
		return
	}
	select {
	case p.free <- b[:p.size]:
	default:
	}
}
