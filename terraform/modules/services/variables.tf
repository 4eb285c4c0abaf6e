variable "name" {
  description = "Prefix for resource names, e.g. ledger-prod-us-east-1."
  type        = string
}

variable "lb_name" {
  description = "Name of the ALB and prefix of its target groups. AWS caps both at 32 characters and needs them unique per region only, so the environment's name suffices (ledger-prod)."
  type        = string
  validation {
    # Leaves room for the longest "-<service>" suffix, "-region-node".
    condition     = length(var.lb_name) <= 20
    error_message = "lb_name must be at most 20 characters."
  }
}

variable "region" {
  description = "AWS region the services run in (for the log driver)."
  type        = string
}

variable "vpc_id" {
  type = string
}

variable "public_subnet_ids" {
  description = "Where the ALB listens."
  type        = list(string)
}

variable "private_subnet_ids" {
  description = "Where the tasks run, without public addresses."
  type        = list(string)
}

variable "vpc_cidr" {
  description = "Tasks may reach Aurora and MSK in this range."
  type        = string
}

variable "certificate_arn" {
  description = "ACM certificate of the region's API host name; the ALB serves HTTPS only."
  type        = string
}

variable "image_registry" {
  description = "Registry prefix of the images, e.g. 123456789012.dkr.ecr.us-east-1.amazonaws.com/ (empty: Docker Hub)."
  type        = string
  default     = ""
}

variable "image_tag" {
  description = "Tag of ledger/region-node, ledger/replicator and ledger/reconcile to run; all three are released together."
  type        = string
  validation {
    # A moving tag would let a task restart onto another build than its siblings.
    condition     = length(var.image_tag) > 0 && var.image_tag != "latest"
    error_message = "image_tag must name a release, not be empty or \"latest\"."
  }
}

variable "services" {
  description = "The ledger's services. A load-balanced service with a host_header gets a listener rule; the one without is the listener's default."
  type = map(object({
    port          = number
    health_path   = string
    desired_count = number
    cpu           = number
    memory        = number
    command       = optional(list(string))
    environment   = optional(map(string), {})
    secrets       = optional(map(string), {}) # variable name -> Secrets Manager ARN
    load_balanced = bool
    host_header   = optional(string)
  }))
  validation {
    condition     = length([for s in var.services : s if s.load_balanced && s.host_header == null]) == 1
    error_message = "Exactly one load-balanced service must have no host_header: it is the listener's default."
  }
}

variable "secret_arns" {
  description = "Every secret any service reads; the execution role may read these and no others."
  type        = list(string)
}

variable "kms_key_arn" {
  type = string
}

variable "log_retention_days" {
  type    = number
  default = 365
  validation {
    condition     = var.log_retention_days >= 365
    error_message = "Service logs are audit evidence for a year: log_retention_days must be at least 365."
  }
}

variable "tags" {
  type    = map(string)
  default = {}
}
