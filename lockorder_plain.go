//go:build !lockorder

package ermeosecrets

import "sync"

// Release builds: plain mutexes (see lockorder_check.go for the checked build).

type mutex = sync.Mutex

// lockOrderChecked says whether this build checks the lock order.
const lockOrderChecked = false

// lockOrderInversions is always 0: nothing is checked.
func lockOrderInversions() int64 { return 0 }

func takingOuter(*outerLock)   {}
func releasedOuter(*outerLock) {}
