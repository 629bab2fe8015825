# What Prometheus's token may do: read the Ermeo engine's metrics, nothing
# else (no creds, no accounts). Mounted elsewhere than ermeo/? Change the path.
path "ermeo/metrics" {
  capabilities = ["read"]
}
