package e2e

import (
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hashicorp/vault/api"

	"github.com/ermeo-community/vault-plugin-secrets-ermeo/internal/fakeermeo"
)

// appRole is an AppRole auth mount of one test, with one role whose token
// carries the example application policy (examples/policy/app.hcl) for the
// test's mount.
type appRole struct {
	mount    string // e.g. "approle-1a2b3c4d", without "auth/"
	policy   string // the policy's name
	roleID   string
	secretID string
}

// exampleFile returns the text of a file of examples/, with each old string
// replaced by its new one. Each old string must occur in the file exactly
// once, so that a change to the example that the test does not follow fails
// here instead of testing something else.
func exampleFile(t *testing.T, rel string, replace ...string) string {
	t.Helper()
	root, err := ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(root, rel))
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	for i := 0; i+1 < len(replace); i += 2 {
		if n := strings.Count(s, replace[i]); n != 1 {
			t.Fatalf("%s holds %q %d times, want once", rel, replace[i], n)
		}
		s = strings.Replace(s, replace[i], replace[i+1], 1)
	}
	return s
}

// appPolicy is examples/policy/app.hcl for the engine mounted at mount.
func appPolicy(t *testing.T, mount string) string {
	return exampleFile(t, "examples/policy/app.hcl", `path "ermeo/creds/app"`, `path "`+mount+`/creds/app"`)
}

// newAppRole enables AppRole at a path of its own (the server is shared),
// writes the example policy for e's mount, creates the role "app" with it,
// and returns its role_id and a new secret_id. All of it is removed when the
// test ends.
func newAppRole(t *testing.T, e *env) *appRole {
	t.Helper()
	sys := vault.Client.Sys()
	id := randomHex(4)
	a := &appRole{mount: "approle-" + id, policy: "ermeo-app-" + id}

	if err := sys.EnableAuthWithOptions(a.mount, &api.EnableAuthOptions{Type: "approle"}); err != nil {
		t.Fatalf("enabling AppRole at %s: %v", a.mount, err)
	}
	t.Cleanup(func() {
		if err := sys.DisableAuth(a.mount); err != nil {
			t.Errorf("disabling auth/%s: %v", a.mount, err)
		}
	})
	if err := sys.PutPolicy(a.policy, appPolicy(t, e.mount)); err != nil {
		t.Fatalf("writing policy %s: %v", a.policy, err)
	}
	t.Cleanup(func() {
		if err := sys.DeletePolicy(a.policy); err != nil {
			t.Errorf("deleting policy %s: %v", a.policy, err)
		}
	})

	l := vault.Client.Logical()
	role := "auth/" + a.mount + "/role/app"
	if _, err := l.Write(role, map[string]any{
		"token_policies": a.policy,
		"token_ttl":      "1h",
		"token_max_ttl":  "4h",
	}); err != nil {
		t.Fatalf("creating the role: %v", err)
	}
	s, err := l.Read(role + "/role-id")
	if err != nil || s == nil {
		t.Fatalf("reading the role_id: %v", err)
	}
	a.roleID, _ = s.Data["role_id"].(string)
	s, err = l.Write(role+"/secret-id", nil)
	if err != nil || s == nil {
		t.Fatalf("creating a secret_id: %v", err)
	}
	a.secretID, _ = s.Data["secret_id"].(string)
	if a.roleID == "" || a.secretID == "" {
		t.Fatalf("role_id %q, secret_id of %d chars", a.roleID, len(a.secretID))
	}
	return a
}

// login logs in with the role's role_id and secret_id and returns a client
// that uses the token it got.
func (a *appRole) login(t *testing.T) (*api.Client, *api.SecretAuth) {
	t.Helper()
	s, err := vault.Client.Logical().Write("auth/"+a.mount+"/login", map[string]any{
		"role_id": a.roleID, "secret_id": a.secretID,
	})
	if err != nil || s == nil || s.Auth == nil {
		t.Fatalf("AppRole login: %v", err)
	}
	c, err := vault.Client.Clone()
	if err != nil {
		t.Fatal(err)
	}
	c.SetToken(s.Auth.ClientToken)
	return c, s.Auth
}

// profileStatus is the HTTP status of GET /api/v1/profile at the fake Ermeo
// at url with the given access token.
func profileStatus(t *testing.T, url, token string) int {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url+fakeermeo.ProfilePath, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Errorf("GET %s: %v", fakeermeo.ProfilePath, err)
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

func TestAppRoleReadsOnlyItsCreds(t *testing.T) {
	e := newEnv(t, fakeermeo.Options{Users: map[string]string{
		testUser:           testPassword,
		"john@example.com": "battery-staple",
	}})
	e.configure()
	e.mustWrite("accounts/app", map[string]any{"username": testUser, "password": testPassword})
	e.mustWrite("accounts/other", map[string]any{"username": "john@example.com", "password": "battery-staple"})

	a := newAppRole(t, e)
	app, auth := a.login(t)
	t.Logf("AppRole login at auth/%s: policies %v, token ttl %ds", a.mount, auth.Policies, auth.LeaseDuration)
	hasPolicy := false
	for _, p := range auth.Policies {
		hasPolicy = hasPolicy || p == a.policy
	}
	if !hasPolicy {
		t.Fatalf("the app's token lacks policy %s: %v", a.policy, auth.Policies)
	}

	// The application reads its token, and the token works at Ermeo.
	s, err := app.Logical().Read(e.mount + "/creds/app")
	if err != nil || s == nil {
		t.Fatalf("app: read %s/creds/app: %v", e.mount, err)
	}
	e.record(s)
	tok, _ := s.Data["access_token"].(string)
	if !e.fake.AccessTokenValid(tok) {
		t.Fatalf("app: creds/app returned a token the fake does not accept")
	}
	if st := profileStatus(t, e.url, tok); st != http.StatusOK {
		t.Fatalf("app: GET %s with the token: %d, want 200", fakeermeo.ProfilePath, st)
	}

	// Everything else of the engine is denied.
	before := e.fake.Counters()
	l := app.Logical()
	denied := []struct {
		what string
		do   func() (*api.Secret, error)
	}{
		{"read config", func() (*api.Secret, error) { return l.Read(e.mount + "/config") }},
		{"write config", func() (*api.Secret, error) {
			return l.Write(e.mount+"/config", map[string]any{"api_url": "http://127.0.0.1:1"})
		}},
		{"list accounts", func() (*api.Secret, error) { return l.List(e.mount + "/accounts") }},
		{"read accounts/app", func() (*api.Secret, error) { return l.Read(e.mount + "/accounts/app") }},
		{"write accounts/app", func() (*api.Secret, error) {
			return l.Write(e.mount+"/accounts/app", map[string]any{"min_ttl": "1m"})
		}},
		{"delete accounts/app", func() (*api.Secret, error) { return l.Delete(e.mount + "/accounts/app") }},
		{"write accounts/app/rotate", func() (*api.Secret, error) { return l.Write(e.mount+"/accounts/app/rotate", nil) }},
		{"read accounts/other", func() (*api.Secret, error) { return l.Read(e.mount + "/accounts/other") }},
		{"read creds/other", func() (*api.Secret, error) { return l.Read(e.mount + "/creds/other") }},
		{"read creds/missing", func() (*api.Secret, error) { return l.Read(e.mount + "/creds/missing") }},
	}
	for _, d := range denied {
		s, err := d.do()
		e.record(s)
		if statusOf(err) != http.StatusForbidden {
			t.Errorf("app: %s: want 403, got %v %v", d.what, s, err)
		}
	}
	if after := e.fake.Counters(); after.Requests != before.Requests {
		t.Errorf("denied requests reached Ermeo: %d token requests before, %d after", before.Requests, after.Requests)
	}

	// The denials were the policy's doing: the root token may do the same.
	if s := e.mustRead("creds/other"); !e.fake.AccessTokenValid(s.Data["access_token"].(string)) {
		t.Errorf("root: creds/other returned a token the fake does not accept")
	}
	e.mustRead("accounts/app")

	// The app's capabilities, as Vault computes them from the policy.
	caps, err := app.Sys().CapabilitiesSelf(e.mount + "/creds/app")
	if err != nil || strings.Join(caps, ",") != "read" {
		t.Errorf("capabilities on creds/app: %v %v, want [read]", caps, err)
	}
	caps, err = app.Sys().CapabilitiesSelf(e.mount + "/creds/other")
	if err != nil || strings.Join(caps, ",") != "deny" {
		t.Errorf("capabilities on creds/other: %v %v, want [deny]", caps, err)
	}
	e.assertNoSecretReturned(testClientSecret, testPassword, "battery-staple")
}
