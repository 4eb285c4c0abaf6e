# The three-region composition, applied against mocked providers (one per region alias).
mock_provider "aws" {
  alias  = "us_east_1"
  source = "../../tests/mocks"
}

mock_provider "aws" {
  alias  = "eu_west_1"
  source = "../../tests/mocks"
}

mock_provider "aws" {
  alias  = "ap_south_1"
  source = "../../tests/mocks"
}

variables {
  image_tag          = "v1.2.3"
  image_registry     = "123456789012.dkr.ecr.us-east-1.amazonaws.com/"
  zone_id            = "Z123"
  db_master_password = "not-a-real-password"
  certificate_arns = {
    "us-east-1"  = "arn:aws:acm:us-east-1:123456789012:certificate/a"
    "eu-west-1"  = "arn:aws:acm:eu-west-1:123456789012:certificate/b"
    "ap-south-1" = "arn:aws:acm:ap-south-1:123456789012:certificate/c"
  }
}

run "three_regions_each_health_checked" {
  assert {
    condition     = toset(keys(output.route53_health_check_ids)) == toset(["us-east-1", "eu-west-1", "ap-south-1"])
    error_message = "Route 53 health-checks every region."
  }
  assert {
    condition     = length(output.regions) == 3
    error_message = "The environment describes three regions for the chaos suite."
  }
}

run "a_missing_certificate_is_refused" {
  command = plan

  variables {
    certificate_arns = { "us-east-1" = "arn:aws:acm:us-east-1:123456789012:certificate/a" }
  }

  expect_failures = [var.certificate_arns]
}
