package gateway

import "net/http"

// HandOff is the duty of a layer that holds a request's final Failure f
// when its own handler has returned (docs/ARCHITECTURE.md, "Who logs"),
// written once for every layer that can be the outermost:
//
//   - unless the response is committed, it hands f to the nearest
//     enclosing [FailureRecorder] ([RecordFailure]) and, unless f is of
//     class canceled, answers it: write, or [WriteFailure] when write is
//     nil;
//   - when no enclosing layer took f — this layer is the outermost to see
//     it — it calls log (which writes the one line, [LogFailure]; nil logs
//     nothing) and, unless the response is committed, ends the response of
//     a client that went away by aborting the connection
//     (panic(http.ErrAbortHandler), which net/http recovers without
//     logging). Writing nothing is not enough there: net/http would finish
//     the response with an implicit, empty 200, which an HTTP/1 client
//     that only half-closed its connection would read as success.
//
// It reports whether an enclosing layer took f.
func HandOff(w http.ResponseWriter, r *http.Request, f *Failure, committed bool, write, log func()) bool {
	if !committed {
		outer := RecordFailure(w, f)
		if f.Class != ClassCanceled {
			if write != nil {
				write()
			} else {
				WriteFailure(w, r, f)
			}
		}
		if outer {
			return true
		}
	}
	if log != nil {
		log()
	}
	if !committed && f.Class == ClassCanceled {
		panic(http.ErrAbortHandler)
	}
	return false
}
