package ermeo

import (
	"errors"
	"fmt"
)

// The tests sort the client's errors as the plugin does (rotation.go's
// grant): a *RejectedError anywhere in the chain, or no usable answer.

// Outcome says what an error means for the grant that was asked for.
type Outcome int

const (
	OutcomeSuccess  Outcome = iota // err == nil
	OutcomeRejected                // the server answered with an OAuth error: nothing was granted
	OutcomeUnknown                 // no usable answer: the grant may or may not have happened (a refresh token may be spent)
)

func (o Outcome) String() string {
	switch o {
	case OutcomeSuccess:
		return "success"
	case OutcomeRejected:
		return "rejected"
	case OutcomeUnknown:
		return "unknown"
	}
	return fmt.Sprintf("Outcome(%d)", int(o))
}

// OutcomeOf classifies an error returned by the Client: nil is a success, a
// *RejectedError (anywhere in the chain) a rejection, anything else unknown.
func OutcomeOf(err error) Outcome {
	if err == nil {
		return OutcomeSuccess
	}
	var re *RejectedError
	if errors.As(err, &re) {
		return OutcomeRejected
	}
	return OutcomeUnknown
}
