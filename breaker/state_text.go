package breaker

import "fmt"

// UnmarshalText implements encoding.TextUnmarshaler for the names String
// returns, so that a decoded status report keeps its states.
func (s *State) UnmarshalText(b []byte) error {
	for _, c := range []State{StateClosed, StateHalfOpen, StateOpen} {
		if c.String() == string(b) {
			*s = c
			return nil
		}
	}
	return fmt.Errorf("breaker: unknown state %q", b)
}
