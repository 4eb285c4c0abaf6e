variable "name" {
  description = "Prefix for alarm names, e.g. ledger-prod-us-east-1."
  type        = string
}

variable "alb_arn_suffix" {
  type = string
}

variable "target_group_arn_suffixes" {
  description = "Service name -> target group ARN suffix, one unhealthy-target alarm each."
  type        = map(string)
}

variable "ecs_cluster_name" {
  type = string
}

variable "ecs_service_names" {
  type = list(string)
}

variable "aurora_cluster_id" {
  description = "The region's own (writable) cluster."
  type        = string
}

variable "aurora_dr_cluster_ids" {
  description = "Primary's AWS region -> the disaster-recovery secondary of that region's global cluster hosted here; replication lag exists only on secondaries."
  type        = map(string)
  default     = {}
}

variable "replica_lag_ms_max" {
  description = "Global replication lag that pages. The ledger's RPO is measured in seconds; a lag this long means a failover now would lose that much."
  type        = number
  default     = 5000
}

variable "kms_key_arn" {
  type = string
}

variable "tags" {
  type    = map(string)
  default = {}
}
