package gatewaytest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"net"
	"time"
)

// CA is a throwaway certificate authority for tests. Clients that should
// trust its certificates use ClientConfig or Pool.
type CA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	// Pool holds the CA certificate alone.
	Pool *x509.CertPool
}

// NewCA creates a CA valid from an hour ago for a day.
func NewCA() (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("gatewaytest: CA key: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "gatewaytest CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("gatewaytest: CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &CA{cert: cert, key: key, Pool: pool}, nil
}

// Issue returns a server certificate for names, each a DNS name or an IP
// address.
func (ca *CA) Issue(names ...string) (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "gatewaytest server"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("gatewaytest: server certificate: %w", err)
	}
	return tls.Certificate{Certificate: [][]byte{der, ca.cert.Raw}, PrivateKey: key}, nil
}

// ServerConfig returns a server TLS config with a certificate for names,
// offering HTTP/2 and HTTP/1.1.
func (ca *CA) ServerConfig(names ...string) (*tls.Config, error) {
	cert, err := ca.Issue(names...)
	if err != nil {
		return nil, err
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"h2", "http/1.1"}}, nil
}

// ClientConfig returns a client TLS config that trusts this CA only.
func (ca *CA) ClientConfig() *tls.Config { return &tls.Config{RootCAs: ca.Pool} }

// NewTLSUntrusted starts a TLS Server with fault f whose certificate, for
// 127.0.0.1, comes from a CA nobody trusts.
func NewTLSUntrusted(f Fault) *Server {
	ca, err := NewCA()
	if err != nil {
		panic(err)
	}
	cfg, err := ca.ServerConfig("127.0.0.1")
	if err != nil {
		panic(err)
	}
	return NewTLSServer(f, cfg)
}

// NewTLSWrongHost starts a TLS Server with fault f whose certificate comes
// from ca but names only wrong.invalid, so a client that trusts ca still
// fails to verify 127.0.0.1.
func NewTLSWrongHost(ca *CA, f Fault) *Server {
	cfg, err := ca.ServerConfig("wrong.invalid")
	if err != nil {
		panic(err)
	}
	return NewTLSServer(f, cfg)
}

// NewPlainOnTLS starts a plain-HTTP Server whose URL says https: a client
// following the URL attempts a TLS handshake with a server that answers in
// plain HTTP.
func NewPlainOnTLS() *Server {
	s := NewServer(Healthy)
	s.URL = "https://" + s.Addr
	return s
}
