# Clients resolve one name; Route 53 answers with the region of lowest latency whose /readyz
# passes, so a failed region drops out of DNS within about failure_threshold x request_interval
# (30 s) plus the record's TTL (alias records: 60 s).
resource "aws_route53_health_check" "region" {
  for_each          = var.regions
  fqdn              = each.value.alb_dns_name
  port              = 443
  type              = "HTTPS"
  resource_path     = var.health_check_path
  request_interval  = 10
  failure_threshold = 3
  measure_latency   = true
  tags              = merge(var.tags, { Name = "ledger-${each.key}-readyz" })
}

resource "aws_route53_record" "latency" {
  #checkov:skip=CKV2_AWS_23:the alias targets each region's ALB, passed in as a variable, which checkov cannot follow
  for_each        = var.regions
  zone_id         = var.zone_id
  name            = var.record_name
  type            = "A"
  set_identifier  = each.key
  health_check_id = aws_route53_health_check.region[each.key].id

  latency_routing_policy {
    region = each.key
  }

  alias {
    name                   = each.value.alb_dns_name
    zone_id                = each.value.alb_zone_id
    evaluate_target_health = true
  }
}
