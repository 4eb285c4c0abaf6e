# One region's disaster-recovery topology: that region's writable cluster joins it first and holds
# the data; one read-only secondary in the partner region joins it and takes over only on a
# regional failover. Each ledger region has its own (the ledger is active-active, ARCHITECTURE.md).
resource "aws_rds_global_cluster" "this" {
  global_cluster_identifier = var.name
  engine                    = "aurora-postgresql"
  engine_version            = var.engine_version
  database_name             = "ledger"
  storage_encrypted         = true
  deletion_protection       = true
}
