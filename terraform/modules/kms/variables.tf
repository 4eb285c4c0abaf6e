variable "name" {
  description = "Prefix for resource names, e.g. ledger-prod-us-east-1."
  type        = string
}

variable "tags" {
  type    = map(string)
  default = {}
}
