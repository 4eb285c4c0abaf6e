output "alb_dns_name" {
  value = module.services.alb_dns_name
}

output "alb_zone_id" {
  value = module.services.alb_zone_id
}

output "aurora_cluster_arn" {
  value = module.aurora.cluster_arn
}

output "aurora_endpoint" {
  value = module.aurora.endpoint
}

output "kafka_bootstrap" {
  value = module.msk.bootstrap_brokers_tls
}

output "vpc_cidr" {
  value = module.network.cidr_block
}

output "private_subnet_ids" {
  value = module.network.private_subnet_ids
}

output "ecs_cluster_arn" {
  value = module.services.cluster_arn
}

output "kms_key_arn" {
  value = module.kms.key_arn
}
