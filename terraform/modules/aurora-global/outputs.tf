output "id" {
  value = aws_rds_global_cluster.this.id
}

output "engine_version" {
  value = aws_rds_global_cluster.this.engine_version
}
