# The three regions of the ledger, each committing to its own writable Aurora cluster (the ledger is
# active-active). Each region's cluster is the primary of its own global cluster, whose read-only
# disaster-recovery secondary is hosted by the partner region (var.aurora_dr_partners). Each region
# is a copy of modules/region under its own provider; Route 53 (global) is managed through us-east-1.
locals {
  environment = "staging"
  domain      = "staging.ledger.example.com"
  # Non-overlapping ranges, so regions can later be peered and the chaos suite can cut one off by range.
  regions = {
    "us-east-1"  = { ledger = "us-east", cidr = "10.110.0.0/16", azs = ["us-east-1a", "us-east-1b", "us-east-1c"] }
    "eu-west-1"  = { ledger = "eu-west", cidr = "10.120.0.0/16", azs = ["eu-west-1a", "eu-west-1b", "eu-west-1c"] }
    "ap-south-1" = { ledger = "ap-south", cidr = "10.130.0.0/16", azs = ["ap-south-1a", "ap-south-1b", "ap-south-1c"] }
  }
  node_count     = 2
  aurora_class   = "db.r6g.large"
  msk_class      = "kafka.t3.small"
  aurora_version = "15.4"
  tags           = { "ledger:managed-by" = "terraform/environments/${local.environment}" }

  # Each region's global cluster, and for each region the global clusters whose DR secondary it
  # hosts. Only these outputs of the region modules are read here: their DR secondaries depend on
  # this map, so it must not depend on them.
  aurora_globals = {
    "us-east-1"  = { global_cluster_id = module.us_east_1.aurora_global_cluster_id, primary_cluster_arn = module.us_east_1.aurora_cluster_arn, engine_version = module.us_east_1.aurora_engine_version }
    "eu-west-1"  = { global_cluster_id = module.eu_west_1.aurora_global_cluster_id, primary_cluster_arn = module.eu_west_1.aurora_cluster_arn, engine_version = module.eu_west_1.aurora_engine_version }
    "ap-south-1" = { global_cluster_id = module.ap_south_1.aurora_global_cluster_id, primary_cluster_arn = module.ap_south_1.aurora_cluster_arn, engine_version = module.ap_south_1.aurora_engine_version }
  }
  aurora_dr_hosted = { for host in keys(local.regions) : host => {
    for primary, partner in var.aurora_dr_partners : primary => local.aurora_globals[primary] if partner == host
  } }
}

provider "aws" {
  alias  = "us_east_1"
  region = "us-east-1"
  default_tags { tags = local.tags }
}

provider "aws" {
  alias  = "eu_west_1"
  region = "eu-west-1"
  default_tags { tags = local.tags }
}

provider "aws" {
  alias  = "ap_south_1"
  region = "ap-south-1"
  default_tags { tags = local.tags }
}

module "us_east_1" {
  source                   = "../../modules/region"
  providers                = { aws = aws.us_east_1 }
  environment              = local.environment
  region                   = "us-east-1"
  ledger_region            = local.regions["us-east-1"].ledger
  peers                    = [for r, v in local.regions : v.ledger if r != "us-east-1"]
  availability_zones       = local.regions["us-east-1"].azs
  vpc_cidr                 = local.regions["us-east-1"].cidr
  aurora_engine_version    = local.aurora_version
  db_master_password       = var.db_master_password
  aurora_dr_secondaries    = local.aurora_dr_hosted["us-east-1"]
  aurora_instance_class    = local.aurora_class
  msk_broker_instance_type = local.msk_class
  certificate_arn          = var.certificate_arns["us-east-1"]
  image_registry           = var.image_registry
  image_tag                = var.image_tag
  node_count               = local.node_count
  reconcile_host           = "reconcile.us-east-1.${local.domain}"
}

module "eu_west_1" {
  source                   = "../../modules/region"
  providers                = { aws = aws.eu_west_1 }
  environment              = local.environment
  region                   = "eu-west-1"
  ledger_region            = local.regions["eu-west-1"].ledger
  peers                    = [for r, v in local.regions : v.ledger if r != "eu-west-1"]
  availability_zones       = local.regions["eu-west-1"].azs
  vpc_cidr                 = local.regions["eu-west-1"].cidr
  aurora_engine_version    = local.aurora_version
  db_master_password       = var.db_master_password
  aurora_dr_secondaries    = local.aurora_dr_hosted["eu-west-1"]
  aurora_instance_class    = local.aurora_class
  msk_broker_instance_type = local.msk_class
  certificate_arn          = var.certificate_arns["eu-west-1"]
  image_registry           = var.image_registry
  image_tag                = var.image_tag
  node_count               = local.node_count
  reconcile_host           = "reconcile.eu-west-1.${local.domain}"
}

module "ap_south_1" {
  source                   = "../../modules/region"
  providers                = { aws = aws.ap_south_1 }
  environment              = local.environment
  region                   = "ap-south-1"
  ledger_region            = local.regions["ap-south-1"].ledger
  peers                    = [for r, v in local.regions : v.ledger if r != "ap-south-1"]
  availability_zones       = local.regions["ap-south-1"].azs
  vpc_cidr                 = local.regions["ap-south-1"].cidr
  aurora_engine_version    = local.aurora_version
  db_master_password       = var.db_master_password
  aurora_dr_secondaries    = local.aurora_dr_hosted["ap-south-1"]
  aurora_instance_class    = local.aurora_class
  msk_broker_instance_type = local.msk_class
  certificate_arn          = var.certificate_arns["ap-south-1"]
  image_registry           = var.image_registry
  image_tag                = var.image_tag
  node_count               = local.node_count
  reconcile_host           = "reconcile.ap-south-1.${local.domain}"
}

module "dns" {
  source      = "../../modules/dns"
  providers   = { aws = aws.us_east_1 }
  zone_id     = var.zone_id
  record_name = "api.${local.domain}"
  regions = {
    "us-east-1"  = { alb_dns_name = module.us_east_1.alb_dns_name, alb_zone_id = module.us_east_1.alb_zone_id }
    "eu-west-1"  = { alb_dns_name = module.eu_west_1.alb_dns_name, alb_zone_id = module.eu_west_1.alb_zone_id }
    "ap-south-1" = { alb_dns_name = module.ap_south_1.alb_dns_name, alb_zone_id = module.ap_south_1.alb_zone_id }
  }
}
