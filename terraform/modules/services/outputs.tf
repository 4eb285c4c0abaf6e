output "cluster_name" {
  value = aws_ecs_cluster.this.name
}

output "cluster_arn" {
  value = aws_ecs_cluster.this.arn
}

output "alb_arn" {
  value = aws_lb.this.arn
}

output "alb_arn_suffix" {
  value = aws_lb.this.arn_suffix
}

output "alb_dns_name" {
  value = aws_lb.this.dns_name
}

output "alb_zone_id" {
  value = aws_lb.this.zone_id
}

output "target_group_arn_suffixes" {
  value = { for k, tg in aws_lb_target_group.this : k => tg.arn_suffix }
}

output "tasks_security_group_id" {
  value = aws_security_group.tasks.id
}

output "service_names" {
  value = { for k, s in aws_ecs_service.this : k => s.name }
}

output "task_images" {
  description = "Image each task definition runs."
  value       = { for k, _ in var.services : k => "${var.image_registry}ledger/${k}:${var.image_tag}" }
}

output "log_group_retention_days" {
  value = { for k, g in aws_cloudwatch_log_group.service : k => g.retention_in_days }
}

output "container_environment" {
  description = "Service -> the environment variables its task definition gives the container (read back from the task definition)."
  value       = { for k, td in aws_ecs_task_definition.this : k => { for e in try(jsondecode(td.container_definitions)[0].environment, []) : e.name => e.value } }
}
