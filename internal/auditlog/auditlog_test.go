package auditlog

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"
)

// Two entries as Vault 1.21's file audit device writes them (log_raw, cut
// to the fields read), a renewal's response and a line being written.
const (
	credsResponse = `{"time":"2026-12-01T14:26:43.861234Z","type":"response","auth":{"policies":["default","ermeo-app"]},"request":{"path":"ermeo/creds/app","operation":"read"},"response":{"secret":{"lease_id":"ermeo/creds/app/wapN3n"},"data":{"access_token":"at-1","expires_in":11}}}`
	renewResponse = `{"time":"2026-12-01T14:26:45.993Z","type":"response","error":"lease not found","auth":{"policies":["default"]},"request":{"path":"sys/leases/renew","operation":"update","data":{"lease_id":"ermeo/creds/app/wapN3n","increment":0}},"response":{}}`
)

func TestParseReadsTheFieldsCounted(t *testing.T) {
	e, ok := Parse([]byte(credsResponse))
	want := Entry{Type: "response", Time: time.Date(2026, 12, 1, 14, 26, 43, 861234000, time.UTC), Path: "ermeo/creds/app", Operation: "read",
		Policies: []string{"default", "ermeo-app"}, LeaseID: "ermeo/creds/app/wapN3n", AccessToken: "at-1"}
	if !ok || !reflect.DeepEqual(e, want) {
		t.Errorf("Parse(creds) = %+v, %v; want %+v", e, ok, want)
	}
	e, ok = Parse([]byte(renewResponse))
	if !ok || e.RenewOf != "ermeo/creds/app/wapN3n" || e.Error != "lease not found" || e.LeaseID != "" || e.Path != "sys/leases/renew" {
		t.Errorf("Parse(renewal) = %+v, %v", e, ok)
	}
	for _, bad := range []string{"", "  ", `{"time":"2026`, `{"other":1}`} {
		if _, ok := Parse([]byte(bad)); ok {
			t.Errorf("Parse(%q) accepted", bad)
		}
	}
}

func TestTailKeepsALineBeingWritten(t *testing.T) {
	file := filepath.Join(t.TempDir(), "audit.log")
	f, err := os.Create(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tail, err := OpenTail(file)
	if err != nil {
		t.Fatal(err)
	}
	defer tail.Close()
	half := len(renewResponse) / 2
	if _, err := f.WriteString(credsResponse + "\n" + renewResponse[:half]); err != nil {
		t.Fatal(err)
	}
	got, err := tail.Next()
	if err != nil || len(got) != 1 || got[0].AccessToken != "at-1" {
		t.Fatalf("first Next = %+v, %v; want the creds entry only", got, err)
	}
	if _, err := f.WriteString(renewResponse[half:] + "\n"); err != nil {
		t.Fatal(err)
	}
	got, err = tail.Next()
	if err != nil || len(got) != 1 || got[0].RenewOf != "ermeo/creds/app/wapN3n" {
		t.Fatalf("second Next = %+v, %v; want the renewal, whole", got, err)
	}
	all, err := ReadFile(file)
	if err != nil || len(all) != 2 {
		t.Fatalf("ReadFile = %d entries, %v; want 2", len(all), err)
	}
}
