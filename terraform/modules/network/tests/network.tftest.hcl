mock_provider "aws" {
  source = "../../tests/mocks"
}

variables {
  name               = "ledger-test-us-east-1"
  cidr_block         = "10.10.0.0/16"
  availability_zones = ["us-east-1a", "us-east-1b", "us-east-1c"]
  kms_key_arn        = "arn:aws:kms:us-east-1:123456789012:key/test"
}

run "subnets_in_every_zone" {
  command = plan

  assert {
    condition     = length(aws_subnet.private) == 3 && alltrue([for i, s in aws_subnet.private : s.availability_zone == var.availability_zones[i]])
    error_message = "One private subnet per zone."
  }
  assert {
    condition     = alltrue([for s in aws_subnet.public : s.map_public_ip_on_launch == false])
    error_message = "Nothing gets a public address by accident."
  }
  assert {
    condition     = length(aws_nat_gateway.this) == 3
    error_message = "One NAT gateway per zone, so a zone failure does not cut the others off."
  }
  assert {
    condition     = aws_cloudwatch_log_group.flow.retention_in_days == 365
    error_message = "Flow logs are kept a year."
  }
}

run "two_zones_are_refused" {
  command = plan

  variables {
    availability_zones = ["us-east-1a", "us-east-1b"]
  }

  expect_failures = [var.availability_zones]
}
