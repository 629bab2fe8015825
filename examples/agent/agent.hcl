# Vault Agent that keeps an Ermeo access token in a file for an application.
#
#   vault agent -config=agent.hcl
#
# It logs in with AppRole (role_id and secret_id read from files), reads
# ermeo/creds/app with the template ermeo-token.ctmpl, and writes the token to
# /run/ermeo/token. The lease of creds/app is renewable by half of min_ttl at
# a time, up to half of min_ttl before the token expires: Agent renews it, and
# once a renewal comes back short (only after the token has less than min_ttl
# left) it reads again, which refreshes the chain, and rewrites the file. See
# README.md in this folder.

vault {
  address = "https://vault.example.com:8200"
  # ca_cert = "/etc/vault-agent/vault-ca.pem"
}

auto_auth {
  method "approle" {
    mount_path = "auth/approle"
    config = {
      role_id_file_path                   = "/etc/vault-agent/role-id"
      secret_id_file_path                 = "/etc/vault-agent/secret-id"
      remove_secret_id_file_after_reading = false
    }
  }
}

template_config {
  # Exit (and let the service manager restart Agent) when Vault stays
  # unreachable, rather than leave a token file that is no longer updated.
  exit_on_retry_failure = true
}

template {
  source      = "/etc/vault-agent/ermeo-token.ctmpl"
  destination = "/run/ermeo/token"
  perms       = "0600"
}
