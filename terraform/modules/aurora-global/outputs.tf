# The identifier is what AWS names the global cluster by (the provider's id is the same string);
# referring to the resource still orders its members after it, and the value is known at plan, so
# the tests can check which regional clusters join which global cluster.
output "id" {
  value = aws_rds_global_cluster.this.global_cluster_identifier
}

output "engine_version" {
  value = aws_rds_global_cluster.this.engine_version
}
