variable "name" {
  description = "Cluster name, e.g. ledger-prod-us-east-1."
  type        = string
}

variable "kafka_version" {
  type    = string
  default = "3.5.1"
}

variable "broker_instance_type" {
  type    = string
  default = "kafka.m5.large"
}

variable "broker_volume_gb" {
  type    = number
  default = 500
}

variable "subnet_ids" {
  description = "One private subnet per broker's zone; three brokers, three zones."
  type        = list(string)
  validation {
    condition     = length(var.subnet_ids) == 3
    error_message = "MSK here runs three brokers, one per zone: give exactly three subnets."
  }
}

variable "vpc_id" {
  type = string
}

variable "client_security_group_ids" {
  description = "Security groups (the ECS services') allowed to reach the brokers."
  type        = list(string)
}

variable "kms_key_arn" {
  type = string
}

variable "log_retention_days" {
  type    = number
  default = 365
}

variable "tags" {
  type    = map(string)
  default = {}
}
