output "topic_arn" {
  value = aws_sns_topic.alarms.arn
}

output "alarm_names" {
  value = concat(
    [aws_cloudwatch_metric_alarm.alb_5xx.alarm_name, aws_cloudwatch_metric_alarm.target_5xx.alarm_name, aws_cloudwatch_metric_alarm.aurora_cpu.alarm_name],
    [for a in aws_cloudwatch_metric_alarm.unhealthy_targets : a.alarm_name],
    [for a in aws_cloudwatch_metric_alarm.replica_lag : a.alarm_name],
    [for a in aws_cloudwatch_metric_alarm.service_cpu : a.alarm_name],
  )
}
