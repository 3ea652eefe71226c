package proxykit

import "testing"

// RunConformance runs the conformance suite (conformance_test.go) through
// stacks that build makes, for tests outside the package that wrap the
// stack further (telemetry).
func RunConformance(t *testing.T, name string, build func(Config) (*Stack, error)) {
	runConformance(t, stackMode(name, build))
}
