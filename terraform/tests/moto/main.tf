# Applies the modules moto can emulate (network, KMS, one region's Aurora global cluster and its
# writable primary (moto runs one region, so no DR secondary in a partner region), ECS behind
# an ALB, alarms, Route 53) against a moto server, so the configuration meets a real AWS API shape
# and not only a mocked provider. Run by scripts/terraform-checks.sh, which starts moto, applies,
# inspects the result through boto3 and destroys. Not a deployable root module.
#
# Left out, because moto cannot take them:
# - modules/msk: moto's MSK clusters never leave CREATING, so the apply would wait forever.
# - modules/region: it composes MSK.
terraform {
  required_version = ">= 1.7"
  required_providers {
    aws = { source = "hashicorp/aws", version = "3.39.0" }
  }
}

variable "endpoint" {
  description = "The moto server, e.g. http://127.0.0.1:5000."
  type        = string
}

variable "certificate_pem" {
  description = "Self-signed certificate the script generates for the ALB listener (moto checks the ARN exists)."
  type        = string
}

variable "private_key_pem" {
  type      = string
  sensitive = true
}

provider "aws" {
  region                      = "us-east-1"
  access_key                  = "test"
  secret_key                  = "test"
  skip_credentials_validation = true
  skip_requesting_account_id  = true
  skip_metadata_api_check     = true
  skip_region_validation      = true

  endpoints {
    acm            = var.endpoint
    cloudwatch     = var.endpoint
    cloudwatchlogs = var.endpoint
    ec2            = var.endpoint
    ecs            = var.endpoint
    elb            = var.endpoint # provider 3.x serves ELBv2 through this one too
    iam            = var.endpoint
    kms            = var.endpoint
    rds            = var.endpoint
    route53        = var.endpoint
    secretsmanager = var.endpoint
    sns            = var.endpoint
    sts            = var.endpoint
  }
}

locals {
  name = "ledger-moto-us-east-1"
}

module "kms" {
  source = "../../modules/kms"
  name   = local.name
}

module "network" {
  source             = "../../modules/network"
  name               = local.name
  cidr_block         = "10.10.0.0/16"
  availability_zones = ["us-east-1a", "us-east-1b", "us-east-1c"]
  kms_key_arn        = module.kms.key_arn
}

resource "aws_acm_certificate" "api" {
  certificate_body = var.certificate_pem
  private_key      = var.private_key_pem
  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_secretsmanager_secret" "api_key" {
  name       = "${local.name}/api-key"
  kms_key_id = module.kms.key_arn
}

module "services" {
  source             = "../../modules/services"
  name               = local.name
  lb_name            = "ledger-moto"
  region             = "us-east-1"
  vpc_id             = module.network.vpc_id
  vpc_cidr           = module.network.cidr_block
  public_subnet_ids  = module.network.public_subnet_ids
  private_subnet_ids = module.network.private_subnet_ids
  certificate_arn    = aws_acm_certificate.api.arn
  image_tag          = "moto-check"
  kms_key_arn        = module.kms.key_arn
  secret_arns        = [aws_secretsmanager_secret.api_key.arn]
  services = {
    region-node = {
      port          = 8080
      health_path   = "/readyz"
      desired_count = 2
      cpu           = 1024
      memory        = 2048
      load_balanced = true
      environment   = { PGHOST = module.aurora.endpoint, PGDATABASE = "ledger" }
      secrets       = { LEDGER_NODE_BOOTSTRAP_API_KEY = aws_secretsmanager_secret.api_key.arn }
    }
    replicator = { port = 9100, health_path = "/healthz", desired_count = 1, cpu = 512, memory = 1024, load_balanced = false }
  }
}

module "global_db" {
  source = "../../modules/aurora-global"
  name   = local.name
}

module "aurora" {
  source                    = "../../modules/aurora"
  name                      = local.name
  global_cluster_id         = module.global_db.id
  engine_version            = module.global_db.engine_version
  is_primary                = true
  master_password           = "moto-only-password"
  vpc_id                    = module.network.vpc_id
  subnet_ids                = module.network.private_subnet_ids
  client_security_group_ids = [module.services.tasks_security_group_id]
  kms_key_arn               = module.kms.key_arn
}

module "alarms" {
  source                    = "../../modules/alarms"
  name                      = local.name
  alb_arn_suffix            = module.services.alb_arn_suffix
  target_group_arn_suffixes = module.services.target_group_arn_suffixes
  ecs_cluster_name          = module.services.cluster_name
  ecs_service_names         = keys(module.services.service_names)
  aurora_cluster_id         = module.aurora.cluster_id
  kms_key_arn               = module.kms.key_arn
}

resource "aws_route53_zone" "ledger" {
  #checkov:skip=CKV2_AWS_38:a throw-away zone inside moto, never delegated
  #checkov:skip=CKV2_AWS_39:a throw-away zone inside moto, never delegated
  name          = "ledger.test"
  force_destroy = true
}

# moto runs one region here, so all three latency records alias the one ALB; what this exercises is
# Route 53 taking a health check and a latency record per region for the one API name.
module "dns" {
  source      = "../../modules/dns"
  zone_id     = aws_route53_zone.ledger.zone_id
  record_name = "api.ledger.test"
  regions = {
    for r in ["us-east-1", "eu-west-1", "ap-south-1"] : r => {
      alb_dns_name = module.services.alb_dns_name
      alb_zone_id  = module.services.alb_zone_id
    }
  }
}

output "aurora_cluster_id" {
  value = module.aurora.cluster_id
}

output "global_cluster_id" {
  value = module.global_db.id
}

output "ecs_cluster_name" {
  value = module.services.cluster_name
}

output "ecs_services" {
  value = keys(module.services.service_names)
}

output "alb_arn" {
  value = module.services.alb_arn
}

output "zone_id" {
  value = aws_route53_zone.ledger.zone_id
}

output "health_check_ids" {
  value = module.dns.health_check_ids
}

output "alarm_names" {
  value = module.alarms.alarm_names
}
