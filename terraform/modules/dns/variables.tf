variable "zone_id" {
  description = "Route 53 hosted zone the API name lives in (owned outside this stack)."
  type        = string
}

variable "record_name" {
  description = "The API's name clients use, e.g. api.ledger.example.com; Route 53 answers with the nearest healthy region."
  type        = string
}

variable "regions" {
  description = "AWS region -> its ALB. Every region gets a latency record and a health check."
  type = map(object({
    alb_dns_name = string
    alb_zone_id  = string
  }))
  validation {
    condition     = length(var.regions) > 0
    error_message = "regions must name at least one region: an empty map would publish no record at all."
  }
}

variable "health_check_path" {
  description = "Route 53 routes only to regions whose node answers this with 2xx/3xx."
  type        = string
  default     = "/readyz"
}

variable "tags" {
  type    = map(string)
  default = {}
}
