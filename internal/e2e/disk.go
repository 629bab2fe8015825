package e2e

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"syscall"
)

// SmallDisk is a tmpfs of a fixed size mounted at a directory, which a test
// can fill to the last byte (Fill, FillLeaving) and free again (Free): a
// disk that runs out of space under whatever writes there, such as a Vault
// node's Raft directory. It needs root (CAP_SYS_ADMIN).
type SmallDisk struct {
	Dir  string
	Size int64

	mu      sync.Mutex
	mounted bool
	filler  string
}

// fillerName is the file that Fill grows until the disk is full.
const fillerName = ".smalldisk-filler"

// MountSmallDisk creates dir if needed and mounts a tmpfs of size bytes
// (rounded up by the kernel to whole pages) on it, mode 0700. Unmount it
// when done, also when the test fails: t.Cleanup(func() { d.Unmount() }).
func MountSmallDisk(dir string, size int64) (*SmallDisk, error) {
	if size <= 0 {
		return nil, fmt.Errorf("small disk: size %d", size)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	opts := fmt.Sprintf("size=%d,mode=0700", size)
	if err := syscall.Mount("tmpfs", dir, "tmpfs", syscall.MS_NOSUID|syscall.MS_NODEV, opts); err != nil {
		return nil, fmt.Errorf("mount -t tmpfs -o %s tmpfs %s: %w (this needs root)", opts, dir, err)
	}
	return &SmallDisk{Dir: dir, Size: size, mounted: true, filler: filepath.Join(dir, fillerName)}, nil
}

// Available is how many bytes an unprivileged writer can still write (tmpfs
// reserves nothing for root: it is what anyone can write).
func (d *SmallDisk) Available() (int64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(d.Dir, &st); err != nil {
		return 0, err
	}
	return int64(st.Bavail) * int64(st.Bsize), nil
}

// Used is how many bytes the disk holds, the filler included.
func (d *SmallDisk) Used() (int64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(d.Dir, &st); err != nil {
		return 0, err
	}
	return int64(st.Blocks-st.Bfree) * int64(st.Bsize), nil
}

// Fill grows the filler file until a write fails with ENOSPC, so that the
// disk is full to the byte; the filler stays until Free. Calling it again on
// a full disk is harmless (it fills what was freed meanwhile).
func (d *SmallDisk) Fill() error { return d.FillLeaving(0) }

// FillLeaving grows the filler file until only leave bytes are free (rounded
// down to whole pages, which is what tmpfs allocates), or, with leave 0,
// until a write fails with ENOSPC.
func (d *SmallDisk) FillLeaving(leave int64) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.mounted {
		return errors.New("small disk: not mounted")
	}
	f, err := os.OpenFile(d.filler, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		if errors.Is(err, syscall.ENOSPC) {
			return nil // not even an inode left: full
		}
		return err
	}
	defer f.Close()
	buf := make([]byte, 64<<10)
	for chunk := len(buf); chunk > 0; {
		if leave > 0 {
			avail, err := d.Available()
			if err != nil {
				return err
			}
			if avail <= leave {
				return nil
			}
			if want := avail - leave; want < int64(chunk) {
				chunk = int(want)
			}
		}
		_, err := f.Write(buf[:chunk])
		switch {
		case err == nil:
		case errors.Is(err, syscall.ENOSPC):
			// Try smaller writes, down to one byte, to use the last
			// partial page too.
			chunk /= 2
		default:
			return fmt.Errorf("filling %s: %w", d.Dir, err)
		}
	}
	return nil
}

// Free removes the filler: the disk has the space it had before Fill.
func (d *SmallDisk) Free() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := os.Remove(d.filler); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// Unmount detaches the tmpfs (lazily: a process still holding a file there,
// such as a vault server being stopped, keeps it until it closes the file,
// but the directory is unmounted at once), and everything written there is
// gone. It can be called more than once.
func (d *SmallDisk) Unmount() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.mounted {
		return nil
	}
	if err := syscall.Unmount(d.Dir, syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) {
		return fmt.Errorf("umount -l %s: %w", d.Dir, err)
	}
	d.mounted = false
	return nil
}
