variable "name" {
  description = "Prefix for resource names, e.g. ledger-prod-us-east-1."
  type        = string
}

variable "cidr_block" {
  description = "The region's VPC range; must not overlap another region's (cross-region replication and the chaos network experiment address regions by range)."
  type        = string
  validation {
    condition     = can(cidrhost(var.cidr_block, 0))
    error_message = "cidr_block must be a CIDR range."
  }
}

variable "availability_zones" {
  description = "Zones to spread subnets over; MSK needs one subnet per broker, hence three."
  type        = list(string)
  validation {
    condition     = length(var.availability_zones) >= 3
    error_message = "Three availability zones are needed: MSK puts one broker in each, Aurora keeps a reader in another zone than the writer."
  }
}

variable "flow_log_retention_days" {
  description = "Retention of the VPC flow log group."
  type        = number
  default     = 365
}

variable "kms_key_arn" {
  description = "Key that encrypts the flow log group."
  type        = string
}

variable "tags" {
  type    = map(string)
  default = {}
}
