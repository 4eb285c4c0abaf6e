variable "name" {
  description = "Cluster identifier, e.g. ledger-prod-us-east-1 (a primary) or ledger-prod-us-east-1-dr (its secondary, in the partner region)."
  type        = string
}

variable "global_cluster_id" {
  description = "The global cluster this regional cluster joins."
  type        = string
}

variable "engine_version" {
  description = "Must equal the global cluster's."
  type        = string
  validation {
    condition     = can(regex("^15\\.", var.engine_version))
    error_message = "The ledger's migrations target PostgreSQL 15: engine_version must be 15.x."
  }
}

variable "is_primary" {
  description = "A primary (each ledger region's own cluster) creates the database and takes writes; a secondary is its read-only disaster-recovery copy in another region until a regional failover."
  type        = bool
}

variable "primary_cluster_arn" {
  description = "For a secondary: the primary's cluster, which must have joined the global cluster before a secondary can."
  type        = string
  default     = null
}

variable "master_password" {
  description = "For the primary only (secondaries inherit it). Provider 3.x cannot let RDS manage it; the same value is stored in Secrets Manager by the region module."
  type        = string
  default     = null
  sensitive   = true
}

variable "backup_retention_days" {
  description = "Automated backups, and so point-in-time recovery, reach back this many days."
  type        = number
  default     = 35
  validation {
    # A ledger must be restorable to any moment of the last five weeks (monthly close plus a week to
    # notice); 35 is also the most RDS keeps.
    condition     = var.backup_retention_days == 35
    error_message = "backup_retention_days must be 35: the ledger's recovery window is five weeks, the most Aurora keeps."
  }
}

variable "instance_class" {
  description = "Provisioned class until the provider can express Serverless v2 (see modules/beyond-3-39)."
  type        = string
  default     = "db.r6g.large"
}

variable "instance_count" {
  description = "Writer plus readers; at least two so a zone failure is a failover, not an outage."
  type        = number
  default     = 2
  validation {
    condition     = var.instance_count >= 2
    error_message = "instance_count must be at least 2 (a writer and a reader in another zone)."
  }
}

variable "subnet_ids" {
  type = list(string)
}

variable "vpc_id" {
  type = string
}

variable "client_security_group_ids" {
  description = "Security groups (the ECS services') allowed to reach PostgreSQL."
  type        = list(string)
}

variable "kms_key_arn" {
  type = string
}

variable "tags" {
  type    = map(string)
  default = {}
}
