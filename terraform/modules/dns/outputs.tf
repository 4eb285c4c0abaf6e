output "health_check_ids" {
  value = { for r, hc in aws_route53_health_check.region : r => hc.id }
}

output "record_fqdns" {
  value = { for r, rec in aws_route53_record.latency : r => rec.fqdn }
}
