variable "image_tag" {
  description = "Release of ledger/region-node, ledger/replicator and ledger/reconcile to run."
  type        = string
}

variable "image_registry" {
  description = "Registry prefix, e.g. 123456789012.dkr.ecr.us-east-1.amazonaws.com/."
  type        = string
}

variable "zone_id" {
  description = "Route 53 zone of the API's name."
  type        = string
}

variable "certificate_arns" {
  description = "AWS region -> ACM certificate (in that region) for the API and reconcile host names."
  type        = map(string)
  validation {
    condition     = alltrue([for r in ["us-east-1", "eu-west-1", "ap-south-1"] : contains(keys(var.certificate_arns), r)])
    error_message = "certificate_arns needs a certificate for each of us-east-1, eu-west-1 and ap-south-1."
  }
}

variable "db_master_password" {
  description = "Aurora master password (TF_VAR_db_master_password from the release pipeline's vault)."
  type        = string
  sensitive   = true
}
