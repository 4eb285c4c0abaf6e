mock_provider "aws" {
  source = "../../tests/mocks"
}

variables {
  zone_id     = "Z123"
  record_name = "api.ledger.example.com"
  regions = {
    "us-east-1"  = { alb_dns_name = "a.us-east-1.elb.amazonaws.com", alb_zone_id = "Z35SXDOTRQ7X7K" }
    "eu-west-1"  = { alb_dns_name = "b.eu-west-1.elb.amazonaws.com", alb_zone_id = "Z32O12XQLNTSW2" }
    "ap-south-1" = { alb_dns_name = "c.ap-south-1.elb.amazonaws.com", alb_zone_id = "ZP97RAFLXTNZK" }
  }
}

run "every_region_has_a_health_check_and_a_latency_record" {
  command = plan

  assert {
    condition     = toset(keys(aws_route53_health_check.region)) == toset(["us-east-1", "eu-west-1", "ap-south-1"])
    error_message = "One health check per region."
  }
  assert {
    condition     = alltrue([for r, hc in aws_route53_health_check.region : hc.resource_path == "/readyz" && hc.type == "HTTPS" && hc.fqdn == var.regions[r].alb_dns_name])
    error_message = "Each region's health check must probe its own ALB's /readyz over HTTPS."
  }
  assert {
    condition     = alltrue([for r in keys(var.regions) : aws_route53_record.latency[r].latency_routing_policy[0].region == r])
    error_message = "Every region needs a latency record for its own AWS region."
  }
  assert {
    condition     = alltrue([for r, rec in aws_route53_record.latency : rec.name == "api.ledger.example.com" && rec.set_identifier == r])
    error_message = "All latency records answer for the one API name."
  }
  assert {
    condition     = alltrue([for r, rec in aws_route53_record.latency : one(rec.alias).evaluate_target_health == true])
    error_message = "Records must follow their target's health."
  }
}

run "no_regions_is_refused" {
  command = plan

  variables {
    regions = {}
  }

  expect_failures = [var.regions]
}
