output "experiment_template_ids" {
  value = {
    stop_nodes         = aws_fis_experiment_template.stop_nodes.id
    fail_over_database = aws_fis_experiment_template.fail_over_database.id
    partition_regions  = aws_fis_experiment_template.partition_regions.id
  }
}

output "serverless_v2_scaling" {
  description = "The scaling range modules/aurora adopts with a provider >= 4.12."
  value       = local.serverless_v2_scaling
}
