package ermeosecrets

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/ermeo-community/vault-plugin-secrets-ermeo/internal/fakeermeo"
)

// In-process benchmarks of the hot paths (make bench runs them with
// -benchmem; the end-to-end figures are in internal/bench).

func BenchmarkCredsCachedRead(b *testing.B) {
	e := newTestEnv(b, fakeermeo.Options{})
	e.benchSetup(1)
	req := &logical.Request{Operation: logical.ReadOperation, Path: "creds/a0", Storage: e.view, MountPoint: testMount}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		resp, err := e.b.HandleRequest(ctx, req)
		if err != nil || resp.IsError() {
			b.Fatal(err, resp)
		}
	}
}

func BenchmarkLoadAccountFromStorage(b *testing.B) {
	e := newTestEnv(b, fakeermeo.Options{})
	e.benchSetup(1)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if a, err := loadAccount(ctx, e.storage, "a0"); err != nil || a == nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkPeriodicTick measures one periodic tick over 10,000 accounts, none
// due (the common case: the schedule is in memory).
func BenchmarkPeriodicTick10000Accounts(b *testing.B) {
	e := newTestEnv(b, fakeermeo.Options{})
	e.benchSetup(10000)
	ctx := context.Background()
	req := &logical.Request{Storage: e.view, MountPoint: testMount}
	if err := e.b.periodic(ctx, req); err != nil { // loads the schedule
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if err := e.b.periodic(ctx, req); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkLoadSchedule10000Accounts measures building the keep-alive
// schedule at start-up from 10,000 stored accounts (in-memory storage).
func BenchmarkLoadSchedule10000Accounts(b *testing.B) {
	e := newTestEnv(b, fakeermeo.Options{})
	e.benchSetup(10000)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		e.b.store.reschedule()
		if err := e.b.loadSchedule(ctx, e.view); err != nil {
			b.Fatal(err)
		}
	}
}

// benchSetup writes config and n accounts straight to storage (no grant).
func (e *testEnv) benchSetup(n int) {
	e.t.Helper()
	ctx := context.Background()
	now := e.clock.Now()
	if err := saveConfig(ctx, e.storage, &configEntry{APIURL: e.url, ClientID: testClientID, ClientSecret: testClientSecret,
		BodyFormat: "json", RequestTimeout: defaultRequestTimeout, DefaultMinTTL: defaultMinTTL, DefaultRotationPeriod: defaultRotationPeriod}); err != nil {
		e.t.Fatal(err)
	}
	for i := 0; i < n; i++ {
		a := &accountEntry{Username: testUser, RefreshToken: fmt.Sprintf("%086d", i), RefreshTokenIssuedAt: now,
			AccessToken: fmt.Sprintf("%086d", i+1), AccessTokenExpiresAt: now.Add(2 * time.Hour), Generation: 1, State: stateActive}
		if err := saveAccount(ctx, e.storage, fmt.Sprintf("a%d", i), a); err != nil {
			e.t.Fatal(err)
		}
	}
}
