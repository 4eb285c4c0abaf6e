# One output per key of .devstack/env.json (ledgerctl's Manifest), so `terraform output -json`,
# read value by value, is that file.

output "regions" {
  description = "Each region's endpoints, ports and pids."
  value       = try(local.env.regions, null)
}

output "state_dir" {
  description = "The environment's state folder."
  value       = try(local.env.state_dir, null)
}

output "api_key" {
  description = "Development API key (read and write scopes)."
  value       = try(local.env.api_key, null)
  sensitive   = true
}

output "router_url" {
  description = "The geo-router: the one address clients call."
  value       = try(local.env.router_url, null)
}

output "router_pid" {
  description = "The router's pid."
  value       = try(local.env.router_pid, null)
}

output "reconcile_url" {
  description = "The reconcile service's web UI and API."
  value       = try(local.env.reconcile_url, null)
}

output "reconcile_users" {
  description = "The reconcile service's development staff, with passwords and tokens."
  value       = try(local.env.reconcile_users, null)
  sensitive   = true
}

output "reconcile_database_url" {
  description = "The reconcile service's database."
  value       = try(local.env.reconcile_database_url, null)
  sensitive   = true
}

output "reconcile_pid" {
  description = "The reconcile service's pid."
  value       = try(local.env.reconcile_pid, null)
}

output "toxiproxy_url" {
  description = "Toxiproxy's API: every cross-region link passes through it."
  value       = try(local.env.toxiproxy_url, null)
}

output "toxiproxy_pid" {
  description = "Toxiproxy's pid."
  value       = try(local.env.toxiproxy_pid, null)
}

output "links" {
  description = "The proxied cross-region links (Kafka replication and HTTP anti-entropy)."
  value       = try(local.env.links, null)
}

output "prometheus_url" {
  description = "Prometheus: every component scraped, the alert rules loaded."
  value       = try(local.env.prometheus_url, null)
}

output "prometheus_pid" {
  description = "Prometheus's pid."
  value       = try(local.env.prometheus_pid, null)
}

output "tracing_url" {
  description = "Jaeger's query API and UI: one trace across regions."
  value       = try(local.env.tracing_url, null)
}

output "jaeger_pid" {
  description = "Jaeger's pid."
  value       = try(local.env.jaeger_pid, null)
}
