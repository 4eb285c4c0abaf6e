variable "name" {
  description = "Global cluster identifier, e.g. ledger-prod-us-east-1 (named after its primary's region)."
  type        = string
}

variable "engine_version" {
  description = "Aurora PostgreSQL version; its primary and its secondary must run the same one."
  type        = string
  default     = "15.4"
  validation {
    condition     = can(regex("^15\\.", var.engine_version))
    error_message = "The ledger's migrations target PostgreSQL 15: engine_version must be 15.x."
  }
}
