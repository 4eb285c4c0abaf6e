# Plans the module against a mocked provider: no AWS account, only what the configuration asks for.
mock_provider "aws" {
  source = "../../tests/mocks"
}

variables {
  name                      = "ledger-test-us-east-1"
  global_cluster_id         = "ledger-test"
  engine_version            = "15.4"
  is_primary                = true
  master_password           = "not-a-real-password"
  subnet_ids                = ["subnet-a", "subnet-b", "subnet-c"]
  vpc_id                    = "vpc-1"
  client_security_group_ids = ["sg-tasks"]
  kms_key_arn               = "arn:aws:kms:us-east-1:123456789012:key/test"
}

run "primary_is_encrypted_protected_and_backed_up" {
  command = plan

  assert {
    condition     = aws_rds_cluster.this.storage_encrypted == true
    error_message = "Aurora storage must be encrypted."
  }
  assert {
    condition     = aws_rds_cluster.this.kms_key_id == var.kms_key_arn
    error_message = "Aurora must be encrypted with the region's customer-managed key."
  }
  assert {
    condition     = aws_rds_cluster.this.deletion_protection == true
    error_message = "Aurora must have deletion protection."
  }
  assert {
    condition     = aws_rds_cluster.this.backup_retention_period == 35
    error_message = "Aurora must keep 35 days of backups (point-in-time recovery window)."
  }
  assert {
    condition     = aws_rds_cluster.this.skip_final_snapshot == false
    error_message = "Destroying the cluster must leave a final snapshot."
  }
  assert {
    condition     = startswith(aws_rds_cluster.this.engine_version, "15.") && aws_rds_cluster.this.engine == "aurora-postgresql"
    error_message = "The ledger runs on Aurora PostgreSQL 15."
  }
  assert {
    condition     = aws_rds_cluster.this.global_cluster_identifier == "ledger-test"
    error_message = "The regional cluster must join the global cluster."
  }
  assert {
    condition     = length(aws_rds_cluster_instance.this) >= 2 && alltrue([for i in aws_rds_cluster_instance.this : i.publicly_accessible == false])
    error_message = "At least two private instances (writer and a reader in another zone)."
  }
  assert {
    condition     = one([for p in aws_rds_cluster_parameter_group.this.parameter : p.value if p.name == "rds.force_ssl"]) == "1"
    error_message = "Connections must be forced onto TLS."
  }
}

run "secondary_joins_after_its_primary" {
  command = plan

  variables {
    is_primary          = false
    master_password     = null
    primary_cluster_arn = "arn:aws:rds:us-east-1:123456789012:cluster:ledger-test-us-east-1"
  }

  # That a secondary sends no master credentials cannot be asserted on a plan: the attributes are
  # computed, so an unset one plans as unknown, not null.
  assert {
    condition     = aws_rds_cluster.this.tags["ledger:global-primary"] == var.primary_cluster_arn
    error_message = "A secondary records (and so waits for) the primary it replicates."
  }
  assert {
    condition     = aws_rds_cluster.this.backup_retention_period == 35 && aws_rds_cluster.this.storage_encrypted
    error_message = "A secondary is as protected as the primary."
  }
}

run "short_backup_retention_is_refused" {
  command = plan

  variables {
    backup_retention_days = 7
  }

  expect_failures = [var.backup_retention_days]
}

run "postgres_16_is_refused" {
  command = plan

  variables {
    engine_version = "16.1"
  }

  expect_failures = [var.engine_version]
}

run "primary_without_password_is_refused" {
  command = plan

  variables {
    master_password = null
  }

  expect_failures = [aws_rds_cluster.this]
}
