terraform {
  required_version = ">= 1.7"
  required_providers {
    # Pinned to the provider this repository validates against (terraform/README.md); raising it is
    # when modules/beyond-3-39 can move in.
    aws = { source = "hashicorp/aws", version = "3.39.0" }
  }
  # State lives in S3 with locking; bucket, key and table are given at init
  # (terraform init -backend-config=...), so no account detail is committed.
  backend "s3" {}
}
