# The local three-region environment the chaos suite runs against: no providers, only Terraform's
# built-in terraform_data, whose provisioners call ledgerctl (through scripts/local-env.sh). It
# runs on ports of its own, so it coexists with `./dev up`, and routes every cross-region link
# through Toxiproxy. `terraform output -json` describes it in the shape of .devstack/env.json: one
# output per key of that file.
terraform {
  required_version = ">= 1.7.0"
}

variable "regions" {
  description = "Region names, in the order ports are assigned (at most four: Toxiproxy's links)."
  type        = list(string)
  default     = ["us-east", "eu-west", "ap-south"]
  validation {
    condition     = length(var.regions) >= 2 && length(var.regions) <= 4
    error_message = "Between two and four regions: replication needs two, the proxied links fit four."
  }
}

variable "pg_port_base" {
  description = "PostgreSQL port of the first region; region i listens on base + i."
  type        = number
  default     = 25432
}

variable "kafka_port_base" {
  description = "Kafka client port of the first region; region i uses base + 10 i and the nine above."
  type        = number
  default     = 29092
}

variable "http_port_base" {
  description = "HTTP port of the first region's node; reconcile, router and Toxiproxy sit at +10, +20, +30."
  type        = number
  default     = 28080
}

variable "repo_dir" {
  description = "The repository whose binaries and scripts run the stack (default: the one holding this module)."
  type        = string
  default     = null
}

variable "build" {
  description = "Build the binaries before starting (a test harness that already built them, and holds cargo's lock, says false)."
  type        = bool
  default     = true
}

variable "state_dir" {
  description = "Where the environment keeps data, logs and env.json (default: .state/terraform-local in the repository)."
  type        = string
  default     = null
}

locals {
  repo      = coalesce(var.repo_dir, abspath("${path.module}/../../.."))
  state_dir = coalesce(var.state_dir, "${local.repo}/.state/terraform-local")
  flags = join(" ", [
    "--state-dir '${local.state_dir}'",
    "--regions '${join(",", var.regions)}'",
    "--pg-port-base ${var.pg_port_base}",
    "--kafka-port-base ${var.kafka_port_base}",
    "--http-port-base ${var.http_port_base}",
  ])
}

resource "terraform_data" "stack" {
  # Destroy-time provisioners may only read `self`: everything `down` needs is kept here.
  input = {
    script   = "${local.repo}/scripts/local-env.sh"
    flags    = local.flags
    manifest = "${local.state_dir}/env.json"
  }
  triggers_replace = [local.flags]

  provisioner "local-exec" {
    command     = "'${self.input.script}' up ${self.input.flags}"
    environment = { LEDGER_ENV_BUILD = var.build ? "1" : "0" }
  }

  provisioner "local-exec" {
    when    = destroy
    command = "'${self.input.script}' down ${self.input.flags}"
  }
}

locals {
  # Read after the stack is up (the reference to the resource's output orders it), so apply and
  # every later plan see what ledgerctl wrote.
  manifest_path = terraform_data.stack.output.manifest
  env           = fileexists(local.manifest_path) ? jsondecode(file(local.manifest_path)) : null
}
