# The whole region against a mocked provider, applied (mocked apply invents the computed values), so
# the composition's wiring is exercised: no dependency cycle between the services' security group,
# Aurora and MSK, every module's inputs satisfied.
mock_provider "aws" {
  source = "../../tests/mocks"
}

variables {
  environment           = "test"
  region                = "eu-west-1"
  ledger_region         = "eu-west"
  peers                 = ["us-east", "ap-south"]
  availability_zones    = ["eu-west-1a", "eu-west-1b", "eu-west-1c"]
  vpc_cidr              = "10.20.0.0/16"
  global_cluster_id     = "ledger-test"
  aurora_engine_version = "15.4"
  certificate_arn       = "arn:aws:acm:eu-west-1:123456789012:certificate/test"
  image_tag             = "v1.2.3"
  reconcile_host        = "reconcile.eu-west-1.example.com"
}

run "secondary_region_composes" {
  variables {
    aurora_is_primary          = false
    aurora_primary_cluster_arn = "arn:aws:rds:us-east-1:123456789012:cluster:ledger-test-us-east-1"
  }

  assert {
    condition     = output.alb_dns_name != "" && output.aurora_endpoint != "" && output.kafka_bootstrap != ""
    error_message = "A region exposes its API, database and Kafka endpoints."
  }
  assert {
    condition     = aws_secretsmanager_secret.this["api-key"].kms_key_id == output.kms_key_arn
    error_message = "Secrets are encrypted with the region's key."
  }
  assert {
    condition     = toset(keys(aws_secretsmanager_secret.this)) == toset(["api-key", "session-secret", "db-password"])
    error_message = "The API key, session secret and database password live in Secrets Manager."
  }
  assert {
    condition     = length(aws_secretsmanager_secret_version.db_password) == 0
    error_message = "Only the primary region writes the database password."
  }
}

run "primary_region_composes" {
  variables {
    aurora_is_primary  = true
    db_master_password = "not-a-real-password"
  }

  assert {
    condition     = length(aws_secretsmanager_secret_version.db_password) == 1
    error_message = "The primary region stores the database password it gives Aurora."
  }
}
