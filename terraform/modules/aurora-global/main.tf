# The global cluster only names the replication topology; the primary region's cluster joins it
# first and holds the data, the other regions' clusters join as read-only secondaries that take
# over on a managed failover.
resource "aws_rds_global_cluster" "this" {
  global_cluster_identifier = var.name
  engine                    = "aurora-postgresql"
  engine_version            = var.engine_version
  database_name             = "ledger"
  storage_encrypted         = true
  deletion_protection       = true
}
