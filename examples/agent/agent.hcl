# Vault Agent that keeps an Ermeo access token in a file for an application.
#
#   vault agent -config=agent.hcl
#
# It logs in with AppRole (role_id and secret_id read from files), reads
# ermeo/creds/app with the template ermeo-token.ctmpl, and writes the token to
# /run/ermeo/token. Write the account with lease=false: with the renewable
# lease of creds/app, Agent drops the answer that carries the next token and
# leaves an expired one in the file (README.md in this folder says why); with
# lease=false it reads again when the token has just under min_ttl left.

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
