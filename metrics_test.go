package ermeosecrets

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/ermeo-community/vault-plugin-secrets-ermeo/internal/fakeermeo"
)

type recordedEvents struct {
	mu     sync.Mutex
	events []string
}

func (r *recordedEvents) SendEvent(_ context.Context, t logical.EventType, e *logical.EventData) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, string(t)+" account="+e.Metadata.Fields["account"].GetStringValue()+
		" data_path="+e.Metadata.Fields[logical.EventMetadataDataPath].GetStringValue())
	return nil
}

func TestMetricsAndEventsOfTheRefreshProtocol(t *testing.T) {
	e := newTestEnv(t, fakeermeo.Options{})
	events := &recordedEvents{}
	conf := logical.TestBackendConfig()
	conf.System, conf.StorageView, conf.EventsSender = e.system, e.view, events
	e.b = newBackend(e.clock.Now, e.http)
	if err := e.b.Setup(context.Background(), conf); err != nil {
		t.Fatal(err)
	}
	e.configure()
	e.createAccount("app", nil)
	e.createAccount("kept", map[string]any{"store_password": true})

	e.must(logical.UpdateOperation, "accounts/app/rotate", nil)                             // success
	e.fake.InjectFault(fakeermeo.Fault{Kind: fakeermeo.FaultStatus, Status: 503, Times: 1}) // unknown
	_, _ = e.request(logical.UpdateOperation, "accounts/app/rotate", nil)
	e.spendChainBehindThePluginsBack("kept") // chain gone, recovered with the password
	e.must(logical.UpdateOperation, "accounts/kept/rotate", nil)

	resp := e.must(logical.ReadOperation, "metrics", nil)
	refreshes := resp.Data["refreshes"].(map[string]any)
	if refreshes["success"] != int64(1) || refreshes["unknown"] != int64(1) || refreshes["chain_gone"] != int64(1) {
		t.Errorf("refreshes: %v", refreshes)
	}
	if lost := resp.Data["chains_lost"].(map[string]any); lost["refused"] != int64(1) {
		t.Errorf("chains lost: %v", lost)
	}
	if resp.Data["chains_recovered"] != int64(1) || resp.Data["refresh_seconds_count"] != int64(3) {
		t.Errorf("recovered %v, latency count %v", resp.Data["chains_recovered"], resp.Data["refresh_seconds_count"])
	}
	exp := resp.Data["refresh_token_expires_in_seconds"].(map[string]any)
	if exp["kept"] != int64((14 * 24 * time.Hour).Seconds()) {
		t.Errorf("expires in: %v", exp)
	}

	prom := e.must(logical.ReadOperation, "metrics", map[string]any{"format": "prometheus"}).Data[logical.HTTPRawBody].(string)
	for _, want := range []string{
		`ermeo_refreshes_total{outcome="success"} 1`,
		`ermeo_chains_lost_total{how="refused"} 1`,
		`ermeo_chains_recovered_total 1`,
		`ermeo_refresh_duration_seconds_count 3`,
		`ermeo_refresh_token_expires_in_seconds{account="kept"} 1209600`,
		`ermeo_accounts{state="active"} 2`,
	} {
		if !strings.Contains(prom, want) {
			t.Errorf("prometheus text lacks %q:\n%s", want, prom)
		}
	}

	events.mu.Lock()
	got := strings.Join(events.events, "\n")
	events.mu.Unlock()
	for _, want := range []string{
		"ermeo/chain-rotated account=app data_path=ermeo/creds/app",
		"ermeo/rotation-failed account=app",
		"ermeo/chain-lost account=kept",
		"ermeo/chain-rotated account=kept",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("events lack %q; got:\n%s", want, got)
		}
	}
}
