package ermeosecrets

import (
	"fmt"
	"os"
	"testing"

	"github.com/ermeo-community/vault-plugin-secrets-ermeo/internal/lockorder"
)

// TestMain fails the run when the lock-order checker (-tags lockorder, as
// make test builds) saw two locks taken in both orders anywhere in it, even
// on a schedule that did not deadlock. Its reports are on stderr.
func TestMain(m *testing.M) {
	code := m.Run()
	if n := lockorder.Inversions(); n > 0 {
		fmt.Fprintf(os.Stderr, "FAIL: %d lock-order inversions (see the lock-order reports above; the order is in locks.go)\n", n)
		code = 1
	}
	if !lockorder.Checked && os.Getenv("ERMEO_LOCK_ORDER_REQUIRED") != "" {
		fmt.Fprintln(os.Stderr, "FAIL: ERMEO_LOCK_ORDER_REQUIRED is set but the tests were built without -tags lockorder")
		code = 1
	}
	os.Exit(code)
}
