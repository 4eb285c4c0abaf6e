# Written against a newer AWS provider than the 3.39.0 this repository can load (see README.md):
# scripts/terraform-checks.sh neither initialises nor validates this module, and nothing composes it
# yet. Only terraform fmt and checkov (which need no provider) read it.
terraform {
  required_version = ">= 1.7"
  required_providers {
    # serverlessv2_scaling_configuration: 4.12; aws_fis_experiment_template with the ECS and
    # cross-region network actions: 5.x.
    aws = { source = "hashicorp/aws", version = ">= 5.0" }
  }
}
