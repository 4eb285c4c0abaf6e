# The local multi-region environment: the regions and ports `ledgerctl up` uses by default, exposed
# as outputs with the same shape as .devstack/env.json so the chaos suite reads either one.
terraform {
  required_version = ">= 1.0.3"
}

variable "regions" {
  description = "Region names, in the order ports are assigned."
  type        = list(string)
  default     = ["us-east", "eu-west", "ap-south"]
}

variable "pg_port_base" {
  description = "PostgreSQL port of the first region; region i listens on base + i."
  type        = number
  default     = 15432
}

variable "kafka_port_base" {
  description = "Kafka client port of the first region; region i listens on base + 10 * i."
  type        = number
  default     = 19092
}

variable "http_port_base" {
  description = "HTTP port of the first region's node; region i listens on base + i."
  type        = number
  default     = 18080
}

output "regions" {
  value = [for i, name in var.regions : {
    name            = name
    http_url        = "http://127.0.0.1:${var.http_port_base + i}"
    postgres_url    = "postgres://ledger:ledger@127.0.0.1:${var.pg_port_base + i}/ledger"
    kafka_bootstrap = "127.0.0.1:${var.kafka_port_base + 10 * i}"
  }]
}
