package main

import (
	"bytes"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestHelpNamesNoFileOutsideTheRepository checks that -help names no file
// outside the repository: no file of the shared specification (which a
// clone of the repository does not have), no relative path climbing out of
// it, and not the binary's own path (go run builds it in a temporary
// directory).
func TestHelpNamesNoFileOutsideTheRepository(t *testing.T) {
	for _, arg := range []string{"-help", "-h"} {
		var out bytes.Buffer
		if err := run([]string{arg}, &out); !errors.Is(err, flag.ErrHelp) {
			t.Fatalf("run(%s) = %v, want flag.ErrHelp", arg, err)
		}
		help := out.String()
		if !strings.HasPrefix(help, "Usage of fake-ermeo:\n") || !strings.Contains(help, "-client-secret") {
			t.Fatalf("%s printed:\n%s", arg, help)
		}
		exe, _ := os.Executable()
		for _, outside := range []string{"../", "/work/shared", "shared/", "ermeo-vectors.json", "ermeo-oauth.md",
			filepath.Clean(os.TempDir()) + string(filepath.Separator), filepath.Dir(exe), os.Args[0]} {
			if strings.Contains(help, outside) {
				t.Errorf("%s output names %q:\n%s", arg, outside, help)
			}
		}
	}
}

func TestBadFlagIsAUsageError(t *testing.T) {
	var out bytes.Buffer
	if err := run([]string{"-no-such-flag"}, &out); !errors.Is(err, errUsage) {
		t.Fatalf("run = %v, want errUsage", err)
	}
	if !strings.Contains(out.String(), "flag provided but not defined: -no-such-flag") {
		t.Fatalf("output:\n%s", out.String())
	}
}

func TestCheckLoopback(t *testing.T) {
	for _, tt := range []struct {
		addr string
		ok   bool
	}{
		{"127.0.0.1:0", true},
		{"127.0.0.2:8200", true},
		{"[::1]:0", true},
		{"localhost:0", true},
		{":0", false},
		{"0.0.0.0:0", false},
		{"[::]:0", false},
		{"192.168.1.10:80", false},
		{"example.com:80", false},
		{"127.0.0.1", false},
	} {
		if err := checkLoopback(tt.addr); (err == nil) != tt.ok {
			t.Errorf("checkLoopback(%q) = %v, want ok=%v", tt.addr, err, tt.ok)
		}
	}
}

func TestWriteFileAtomic(t *testing.T) {
	path := filepath.Join(t.TempDir(), "addr")
	for _, content := range []string{"http://127.0.0.1:1", "http://127.0.0.1:2"} {
		if err := writeFileAtomic(path, content); err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(path)
		if err != nil || string(got) != content {
			t.Fatalf("got %q, %v; want %q", got, err, content)
		}
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Fatalf("temporary files left behind: %v", entries)
	}
}
