terraform {
  required_version = ">= 1.7"
  required_providers {
    # 3.39 is the newest provider checked here (see terraform/README.md); newer 3.x/4.x should work
    # but have not been validated against this module.
    aws = { source = "hashicorp/aws", version = ">= 3.39.0" }
  }
}
