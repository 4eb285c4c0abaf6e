# What modules/aurora becomes once the provider is at least 4.12: the cluster scales between 0.5 and
# 64 ACUs (1-128 GiB of memory) and its instances are of class db.serverless. With 3.39 the
# attribute does not exist, so modules/aurora runs provisioned instances (instance_class) instead.
# To move: add this block to aws_rds_cluster.this in modules/aurora and set instance_class to
# "db.serverless"; nothing else in that module changes.
#
#   serverlessv2_scaling_configuration {
#     min_capacity = 0.5
#     max_capacity = 64
#   }
#
# Kept as a comment, not a resource: a second copy of the cluster here would be a second source of
# truth for the ledger's database.
locals {
  serverless_v2_scaling = { min_capacity = 0.5, max_capacity = 64 }
}
