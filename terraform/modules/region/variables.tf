variable "environment" {
  description = "staging or prod; part of every name."
  type        = string
}

variable "region" {
  description = "AWS region this instance of the module runs in (its provider must point there)."
  type        = string
}

variable "ledger_region" {
  description = "The ledger's own name for the region (its LEDGER_NODE_REGION), e.g. us-east."
  type        = string
}

variable "peers" {
  description = "The other regions' ledger names, whose transfers this region replicates."
  type        = list(string)
}

variable "availability_zones" {
  type = list(string)
}

variable "vpc_cidr" {
  type = string
}

variable "aurora_engine_version" {
  description = "Of the region's own global cluster (modules/aurora-global validates it)."
  type        = string
}

variable "db_master_password" {
  description = "Master password of the region's primary cluster; see modules/aurora."
  type        = string
  sensitive   = true
}

variable "aurora_dr_secondaries" {
  description = "AWS region -> that region's global cluster, whose read-only disaster-recovery secondary this region hosts (the regions this one is the partner of)."
  type = map(object({
    global_cluster_id   = string
    primary_cluster_arn = string
    engine_version      = string
  }))
  default = {}
  validation {
    condition     = alltrue([for r, _ in var.aurora_dr_secondaries : r != var.region])
    error_message = "A region cannot host the disaster-recovery copy of its own database: it would be lost with it."
  }
}

variable "aurora_instance_class" {
  type    = string
  default = "db.r6g.large"
}

variable "msk_broker_instance_type" {
  type    = string
  default = "kafka.m5.large"
}

variable "certificate_arn" {
  type = string
}

variable "image_registry" {
  type    = string
  default = ""
}

variable "image_tag" {
  type = string
}

variable "node_count" {
  description = "region-node tasks in this region."
  type        = number
  default     = 3
}

variable "log_retention_days" {
  type    = number
  default = 365
}

variable "reconcile_host" {
  description = "Host name the reconcile UI answers on (a listener rule routes it)."
  type        = string
}

variable "tags" {
  type    = map(string)
  default = {}
}
