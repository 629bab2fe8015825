# Vault Proxy in front of Vault for an application that reads its Ermeo
# access token on every request.
#
#   vault proxy -config=proxy.hcl
#   export VAULT_ADDR=http://127.0.0.1:8100   # the application's, no VAULT_TOKEN
#
# Proxy logs in with AppRole (role_id and secret_id read from files) and adds
# its own token to every request that comes without one. Its cache keeps the
# answer of ermeo/creds/app, whose lease is renewable, and serves it to every
# reader while it renews that lease; a non-renewable answer would go to Vault
# every time. Only processes on this host can reach the listener: anyone who
# can connect gets what the AppRole token may read (../policy/app.hcl).

vault {
  address = "https://vault.example.com:8200"
  # ca_cert = "/etc/vault-proxy/vault-ca.pem"
}

auto_auth {
  method "approle" {
    mount_path = "auth/approle"
    config = {
      role_id_file_path                   = "/etc/vault-proxy/role-id"
      secret_id_file_path                 = "/etc/vault-proxy/secret-id"
      remove_secret_id_file_after_reading = false
    }
  }
}

# Cache leased (renewable) answers, and renew their leases while they are
# cached.
cache {}

api_proxy {
  # A request without X-Vault-Token is sent with Proxy's AppRole token.
  use_auto_auth_token = true
}

listener "tcp" {
  address     = "127.0.0.1:8100"
  tls_disable = true
}
