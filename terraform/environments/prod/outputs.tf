# The same shape as the local stack's .devstack/env.json (regions with http_url and
# kafka_bootstrap), so the chaos suite reads any environment the same way. postgres_url carries no
# password: it is in Secrets Manager.
output "regions" {
  value = [for r in [module.us_east_1, module.eu_west_1, module.ap_south_1] : {
    http_url        = "https://${r.alb_dns_name}"
    postgres_url    = "postgres://ledger_admin@${r.aurora_endpoint}:5432/ledger?sslmode=require"
    kafka_bootstrap = r.kafka_bootstrap
  }]
}

output "api_url" {
  value = "https://api.${local.domain}"
}

output "route53_health_check_ids" {
  value = module.dns.health_check_ids
}
