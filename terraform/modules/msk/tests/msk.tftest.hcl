mock_provider "aws" {
  source = "../../tests/mocks"
}

variables {
  name                      = "ledger-test-us-east-1"
  subnet_ids                = ["subnet-a", "subnet-b", "subnet-c"]
  vpc_id                    = "vpc-1"
  client_security_group_ids = ["sg-tasks"]
  kms_key_arn               = "arn:aws:kms:us-east-1:123456789012:key/test"
}

run "three_brokers_two_insync_tls" {
  command = plan

  assert {
    condition     = aws_msk_cluster.this.number_of_broker_nodes == 3
    error_message = "MSK runs three brokers."
  }
  assert {
    condition     = contains(split("\n", aws_msk_configuration.this.server_properties), "default.replication.factor=3")
    error_message = "Topics must be replicated to all three brokers."
  }
  assert {
    condition     = contains(split("\n", aws_msk_configuration.this.server_properties), "min.insync.replicas=2")
    error_message = "A write must be on two brokers before it is acknowledged."
  }
  assert {
    condition     = contains(split("\n", aws_msk_configuration.this.server_properties), "unclean.leader.election.enable=false")
    error_message = "An out-of-sync replica must never become leader."
  }
  assert {
    condition     = aws_msk_cluster.this.encryption_info[0].encryption_in_transit[0].client_broker == "TLS" && aws_msk_cluster.this.encryption_info[0].encryption_in_transit[0].in_cluster == true
    error_message = "Kafka traffic must be TLS, between clients and brokers and between brokers."
  }
  assert {
    condition     = aws_msk_cluster.this.encryption_info[0].encryption_at_rest_kms_key_arn == var.kms_key_arn
    error_message = "Broker storage must be encrypted with the region's key."
  }
  assert {
    condition     = aws_cloudwatch_log_group.brokers.retention_in_days == 365 && aws_cloudwatch_log_group.brokers.kms_key_id == var.kms_key_arn
    error_message = "Broker logs are kept a year, encrypted."
  }
}

run "two_subnets_are_refused" {
  command = plan

  variables {
    subnet_ids = ["subnet-a", "subnet-b"]
  }

  expect_failures = [var.subnet_ids]
}
