# Policy of an application that needs an Ermeo access token and nothing else:
# it may read the token of the account "app" and is denied everything else of
# the engine (config, accounts, rotate, other accounts' tokens).
#
#   vault policy write ermeo-app examples/policy/app.hcl
#
# Change "ermeo/" if the engine is mounted elsewhere, and "app" to the
# account's name. One policy per application and account.
path "ermeo/creds/app" {
  capabilities = ["read"]
}
