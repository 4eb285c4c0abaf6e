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
  description = "Master password of every region's Aurora primary (TF_VAR_db_master_password from the release pipeline's vault); a promoted DR secondary keeps its primary's."
  type        = string
  sensitive   = true
}

variable "aurora_dr_partners" {
  description = "AWS region -> the region hosting the read-only disaster-recovery secondary of its Aurora global cluster."
  type        = map(string)
  default = {
    "us-east-1"  = "eu-west-1"
    "eu-west-1"  = "ap-south-1"
    "ap-south-1" = "us-east-1"
  }
  validation {
    condition     = toset(keys(var.aurora_dr_partners)) == toset(["us-east-1", "eu-west-1", "ap-south-1"]) && alltrue([for p in values(var.aurora_dr_partners) : contains(["us-east-1", "eu-west-1", "ap-south-1"], p)])
    error_message = "aurora_dr_partners needs a partner for each of us-east-1, eu-west-1 and ap-south-1, and only those regions as partners."
  }
  validation {
    condition     = alltrue([for r, p in var.aurora_dr_partners : r != p])
    error_message = "A region cannot be its own disaster-recovery partner: the copy would be lost with the primary."
  }
}
