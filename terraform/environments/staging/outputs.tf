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

output "aurora_primaries" {
  description = "AWS region -> its writable cluster (the node's database) and the global cluster it is the primary of."
  value = {
    "us-east-1"  = module.us_east_1.aurora_primary
    "eu-west-1"  = module.eu_west_1.aurora_primary
    "ap-south-1" = module.ap_south_1.aurora_primary
  }
}

output "aurora_dr_secondaries" {
  description = "The read-only disaster-recovery secondaries: primary's AWS region, the region hosting it, its global cluster."
  value = flatten([for m in [module.us_east_1, module.eu_west_1, module.ap_south_1] : [
    for primary, s in m.aurora_dr_secondaries : merge(s, { primary_region = primary })
  ]])
}

output "node_database_hosts" {
  description = "AWS region -> PGHOST of its region-node task definition."
  value = {
    "us-east-1"  = module.us_east_1.node_environment["PGHOST"]
    "eu-west-1"  = module.eu_west_1.node_environment["PGHOST"]
    "ap-south-1" = module.ap_south_1.node_environment["PGHOST"]
  }
}
