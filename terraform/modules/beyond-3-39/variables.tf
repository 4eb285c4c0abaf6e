variable "name" {
  description = "Prefix for resource names, e.g. ledger-prod."
  type        = string
}

variable "global_cluster_id" {
  description = "The global cluster the database experiment fails over: the drilled region's own (modules/region's aurora_global_cluster_id)."
  type        = string
}

variable "primary_cluster_arn" {
  description = "The drilled region's writable cluster, the global cluster's primary until the failover."
  type        = string
}

variable "dr_secondary_cluster_arn" {
  description = "Its read-only DR secondary in the partner region, which the failover promotes (FailoverGlobalCluster takes the ARN of a cluster in another region)."
  type        = string
}

variable "ecs_cluster_arn" {
  description = "The cluster whose region-node tasks the stop-tasks experiment stops (one region per experiment template)."
  type        = string
}

variable "private_subnet_arns" {
  description = "Subnets of the region the network experiment cuts off from the other regions."
  type        = list(string)
}

variable "other_region" {
  description = "The region the network experiment disrupts connectivity to."
  type        = string
}

variable "stop_alarm_arn" {
  description = "An alarm that stops every experiment when it fires (the ledger's own health, e.g. the Route 53 health check alarm of another region)."
  type        = string
}

variable "experiment_log_group_arn" {
  description = "Where FIS writes what each experiment did (encrypted, retained with the other logs)."
  type        = string
}

variable "failover_document_arn" {
  description = "SSM automation document that calls rds:FailoverGlobalCluster with GlobalClusterIdentifier and TargetDbClusterIdentifier (the operators' failover runbook)."
  type        = string
}
