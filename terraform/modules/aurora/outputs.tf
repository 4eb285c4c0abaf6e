output "cluster_id" {
  value = aws_rds_cluster.this.id
}

output "cluster_arn" {
  value = aws_rds_cluster.this.arn
}

output "endpoint" {
  description = "Writer endpoint (a secondary's accepts no writes until a regional failover promotes it)."
  value       = aws_rds_cluster.this.endpoint
}

output "reader_endpoint" {
  value = aws_rds_cluster.this.reader_endpoint
}

output "security_group_id" {
  value = aws_security_group.this.id
}

output "is_primary" {
  description = "True for the cluster that creates the database and takes writes (the node's)."
  value       = var.is_primary
}

output "global_cluster_id" {
  value = aws_rds_cluster.this.global_cluster_identifier
}

output "database_name" {
  description = "\"ledger\" on a primary (known at plan); a secondary inherits it from its primary."
  value       = aws_rds_cluster.this.database_name
}
