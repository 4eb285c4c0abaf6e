output "cluster_arn" {
  value = aws_msk_cluster.this.arn
}

output "bootstrap_brokers_tls" {
  description = "TLS bootstrap string the services connect with."
  value       = aws_msk_cluster.this.bootstrap_brokers_tls
}

output "security_group_id" {
  value = aws_security_group.this.id
}

output "server_properties" {
  value = aws_msk_configuration.this.server_properties
}
