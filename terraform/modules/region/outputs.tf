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
  description = "Writer endpoint of the region's own primary: the node's database."
  value       = module.aurora.endpoint
}

output "aurora_global_cluster_id" {
  value = module.aurora_global.id
}

output "aurora_engine_version" {
  value = module.aurora_global.engine_version
}

output "aurora_primary" {
  description = "The region's writable cluster and the global cluster it is the primary of."
  value = {
    region            = var.region
    cluster_id        = module.aurora.cluster_id
    endpoint          = module.aurora.endpoint
    global_cluster_id = module.aurora.global_cluster_id
    is_primary        = module.aurora.is_primary
    database_name     = module.aurora.database_name
  }
}

output "aurora_dr_secondaries" {
  description = "Primary's AWS region -> the disaster-recovery secondary of its global cluster hosted here."
  value = { for r, m in module.aurora_dr : r => {
    region            = var.region
    cluster_id        = m.cluster_id
    endpoint          = m.endpoint
    global_cluster_id = m.global_cluster_id
    is_primary        = m.is_primary
  } }
}

output "node_environment" {
  description = "The region-node container's environment, read back from its task definition (PGHOST is its database)."
  value       = module.services.container_environment["region-node"]
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
