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
  aurora_engine_version = "15.4"
  db_master_password    = "not-a-real-password"
  certificate_arn       = "arn:aws:acm:eu-west-1:123456789012:certificate/test"
  image_tag             = "v1.2.3"
  reconcile_host        = "reconcile.eu-west-1.example.com"
}

run "region_composes_with_its_own_writable_primary" {
  assert {
    condition     = output.alb_dns_name != "" && output.aurora_endpoint != "" && output.kafka_bootstrap != ""
    error_message = "A region exposes its API, database and Kafka endpoints."
  }
  assert {
    condition     = output.aurora_primary.is_primary && output.aurora_primary.database_name == "ledger"
    error_message = "The region's own cluster is a writable primary that creates the ledger database."
  }
  assert {
    condition     = output.aurora_global_cluster_id == "ledger-test-eu-west-1" && output.aurora_primary.global_cluster_id == output.aurora_global_cluster_id
    error_message = "The region's primary heads a global cluster of its own."
  }
  assert {
    condition     = output.node_environment["PGHOST"] == output.aurora_endpoint
    error_message = "The region-node task definition points at the region's own primary writer endpoint."
  }
  assert {
    condition     = length(output.aurora_dr_secondaries) == 0
    error_message = "Without aurora_dr_secondaries a region hosts no other region's copy."
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
    condition     = aws_secretsmanager_secret_version.db_password.secret_id == aws_secretsmanager_secret.this["db-password"].id
    error_message = "Every region stores the password it gives its primary."
  }
}

run "region_hosts_its_partners_dr_secondary" {
  command = plan

  variables {
    aurora_dr_secondaries = {
      "us-east-1" = {
        global_cluster_id   = "ledger-test-us-east-1"
        primary_cluster_arn = "arn:aws:rds:us-east-1:123456789012:cluster:ledger-test-us-east-1"
        engine_version      = "15.4"
      }
    }
  }

  assert {
    condition     = output.aurora_primary.is_primary && output.aurora_primary.global_cluster_id == "ledger-test-eu-west-1"
    error_message = "Hosting another region's copy leaves the region's own cluster a writable primary."
  }
  assert {
    condition     = keys(output.aurora_dr_secondaries) == ["us-east-1"] && !output.aurora_dr_secondaries["us-east-1"].is_primary
    error_message = "The hosted copy is a read-only secondary."
  }
  assert {
    condition     = output.aurora_dr_secondaries["us-east-1"].global_cluster_id == "ledger-test-us-east-1" && output.aurora_dr_secondaries["us-east-1"].region == "eu-west-1"
    error_message = "The hosted secondary joins us-east-1's global cluster, from eu-west-1."
  }
}

run "own_dr_copy_is_refused" {
  command = plan

  variables {
    aurora_dr_secondaries = {
      "eu-west-1" = {
        global_cluster_id   = "ledger-test-eu-west-1"
        primary_cluster_arn = "arn:aws:rds:eu-west-1:123456789012:cluster:ledger-test-eu-west-1"
        engine_version      = "15.4"
      }
    }
  }

  expect_failures = [var.aurora_dr_secondaries]
}
