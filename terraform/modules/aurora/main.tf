resource "aws_db_subnet_group" "this" {
  name       = var.name
  subnet_ids = var.subnet_ids
  tags       = var.tags
}

resource "aws_security_group" "this" {
  name        = "${var.name}-aurora"
  description = "Aurora PostgreSQL of ${var.name}: reachable from the ledger services only"
  vpc_id      = var.vpc_id
  tags        = var.tags
}

resource "aws_security_group_rule" "clients" {
  count                    = length(var.client_security_group_ids)
  type                     = "ingress"
  description              = "PostgreSQL from the ledger ECS services"
  security_group_id        = aws_security_group.this.id
  from_port                = 5432
  to_port                  = 5432
  protocol                 = "tcp"
  source_security_group_id = var.client_security_group_ids[count.index]
}

resource "aws_rds_cluster_parameter_group" "this" {
  name   = var.name
  family = "aurora-postgresql15"
  # Connections without TLS would carry balances in clear text inside the VPC.
  parameter {
    name  = "rds.force_ssl"
    value = "1"
  }
  # Connections and schema changes are the audit trail; slow statements explain commit latency.
  # Logging every statement would put account data in the logs.
  parameter {
    name  = "log_connections"
    value = "1"
  }
  parameter {
    name  = "log_statement"
    value = "ddl"
  }
  parameter {
    name  = "log_min_duration_statement"
    value = "1000"
  }
  tags = var.tags
}

resource "aws_rds_cluster" "this" {
  cluster_identifier              = var.name
  global_cluster_identifier       = var.global_cluster_id
  engine                          = "aurora-postgresql"
  engine_mode                     = "provisioned"
  engine_version                  = var.engine_version
  database_name                   = var.is_primary ? "ledger" : null
  master_username                 = var.is_primary ? "ledger_admin" : null
  master_password                 = var.is_primary ? var.master_password : null
  db_subnet_group_name            = aws_db_subnet_group.this.name
  vpc_security_group_ids          = [aws_security_group.this.id]
  db_cluster_parameter_group_name = aws_rds_cluster_parameter_group.this.name

  storage_encrypted                   = true
  kms_key_id                          = var.kms_key_arn
  backup_retention_period             = var.backup_retention_days
  preferred_backup_window             = "02:00-03:00"
  copy_tags_to_snapshot               = true
  deletion_protection                 = true
  skip_final_snapshot                 = false
  final_snapshot_identifier           = "${var.name}-final"
  iam_database_authentication_enabled = true
  enabled_cloudwatch_logs_exports     = ["postgresql"]

  # A secondary can only join once the primary is in the global cluster; the tag records which
  # primary it replicates and, by referring to it, orders the two.
  tags = merge(var.tags, var.is_primary ? {} : { "ledger:global-primary" = var.primary_cluster_arn })

  lifecycle {
    precondition {
      condition     = !var.is_primary || var.master_password != null
      error_message = "The primary cluster needs master_password."
    }
    # After a global failover the writer moves and AWS rewrites these; Terraform must not fight it.
    ignore_changes = [global_cluster_identifier, replication_source_identifier]
  }
}

data "aws_iam_policy_document" "monitoring_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["monitoring.rds.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "monitoring" {
  name               = "${var.name}-rds-monitoring"
  assume_role_policy = data.aws_iam_policy_document.monitoring_assume.json
  tags               = var.tags
}

data "aws_partition" "current" {}

resource "aws_iam_role_policy_attachment" "monitoring" {
  role       = aws_iam_role.monitoring.name
  policy_arn = "arn:${data.aws_partition.current.partition}:iam::aws:policy/service-role/AmazonRDSEnhancedMonitoringRole"
}

resource "aws_rds_cluster_instance" "this" {
  count                           = var.instance_count
  identifier                      = "${var.name}-${count.index}"
  cluster_identifier              = aws_rds_cluster.this.id
  engine                          = aws_rds_cluster.this.engine
  engine_version                  = aws_rds_cluster.this.engine_version
  instance_class                  = var.instance_class
  db_subnet_group_name            = aws_db_subnet_group.this.name
  publicly_accessible             = false
  auto_minor_version_upgrade      = true
  monitoring_interval             = 15
  monitoring_role_arn             = aws_iam_role.monitoring.arn
  performance_insights_enabled    = true
  performance_insights_kms_key_id = var.kms_key_arn
  copy_tags_to_snapshot           = true
  tags                            = var.tags
}
