package gatewaytest

import (
	"net"
	"os"
	"strconv"
	"syscall"
)

// reservation is a TCP socket bound to a loopback port but not listening:
// the kernel answers connection attempts with RST (ECONNREFUSED), and no
// other socket can take the port meanwhile.
type reservation struct {
	fd   int
	port int
}

func reserve(port int) (*reservation, error) {
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, os.NewSyscallError("socket", err)
	}
	if err := syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1); err != nil {
		syscall.Close(fd)
		return nil, os.NewSyscallError("setsockopt", err)
	}
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Port: port, Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		syscall.Close(fd)
		return nil, os.NewSyscallError("bind", err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		syscall.Close(fd)
		return nil, os.NewSyscallError("getsockname", err)
	}
	return &reservation{fd: fd, port: sa.(*syscall.SockaddrInet4).Port}, nil
}

// listen turns the reservation into a listener on the same port.
func (r *reservation) listen() (net.Listener, error) {
	if err := syscall.Listen(r.fd, syscall.SOMAXCONN); err != nil {
		return nil, os.NewSyscallError("listen", err)
	}
	f := os.NewFile(uintptr(r.fd), "gatewaytest:"+strconv.Itoa(r.port))
	defer f.Close() // FileListener dups the descriptor
	return net.FileListener(f)
}

func (r *reservation) close() { syscall.Close(r.fd) }
