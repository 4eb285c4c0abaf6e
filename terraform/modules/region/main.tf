# One region of the ledger: its own network, writable database, Kafka, and services. The ledger is
# active-active (ARCHITECTURE.md): the region's node commits to this region's Aurora cluster, and
# regions exchange transfers only through the replicator's cross-region Kafka reads. For disaster
# recovery the region's cluster is the primary of its own Aurora global cluster, whose one read-only
# secondary lives in a partner region; this module also hosts the secondaries of the regions it is
# the partner of (var.aurora_dr_secondaries). A region can so be lost whole.
locals {
  name = "ledger-${var.environment}-${var.region}"
  tags = merge(var.tags, { "ledger:environment" = var.environment, "ledger:region" = var.ledger_region })
}

module "kms" {
  source = "../kms"
  name   = local.name
  tags   = local.tags
}

module "network" {
  source             = "../network"
  name               = local.name
  cidr_block         = var.vpc_cidr
  availability_zones = var.availability_zones
  kms_key_arn        = module.kms.key_arn
  tags               = local.tags
}

# Values are never written by Terraform except the database password, which provider 3.x must hand
# to RDS itself; the API key and the session secret are put by the operator
# (aws secretsmanager put-secret-value) so they never reach a state file.
resource "aws_secretsmanager_secret" "this" {
  for_each                = toset(["api-key", "session-secret", "db-password"])
  name                    = "${local.name}/${each.key}"
  kms_key_id              = module.kms.key_arn
  recovery_window_in_days = 30
  tags                    = local.tags
}

resource "aws_secretsmanager_secret_version" "db_password" {
  secret_id     = aws_secretsmanager_secret.this["db-password"].id
  secret_string = var.db_master_password
}

module "services" {
  source             = "../services"
  name               = local.name
  lb_name            = "ledger-${var.environment}"
  region             = var.region
  vpc_id             = module.network.vpc_id
  vpc_cidr           = module.network.cidr_block
  public_subnet_ids  = module.network.public_subnet_ids
  private_subnet_ids = module.network.private_subnet_ids
  certificate_arn    = var.certificate_arn
  image_registry     = var.image_registry
  image_tag          = var.image_tag
  kms_key_arn        = module.kms.key_arn
  log_retention_days = var.log_retention_days
  secret_arns        = [for s in aws_secretsmanager_secret.this : s.arn]
  tags               = local.tags

  services = {
    region-node = {
      port          = 8080
      health_path   = "/readyz"
      desired_count = var.node_count
      cpu           = 2048
      memory        = 4096
      load_balanced = true
      environment = {
        LEDGER_NODE_REGION          = var.ledger_region
        LEDGER_NODE_HTTP_ADDR       = "0.0.0.0:8080"
        LEDGER_NODE_KAFKA_BOOTSTRAP = module.msk.bootstrap_brokers_tls
        PGHOST                      = module.aurora.endpoint
        PGUSER                      = "ledger_admin"
        PGDATABASE                  = "ledger"
      }
      secrets = {
        LEDGER_NODE_BOOTSTRAP_API_KEY = aws_secretsmanager_secret.this["api-key"].arn
        PGPASSWORD                    = aws_secretsmanager_secret.this["db-password"].arn
      }
    }
    reconcile = {
      port          = 8090
      health_path   = "/healthz"
      desired_count = 2
      cpu           = 512
      memory        = 1024
      load_balanced = true
      host_header   = var.reconcile_host
      environment = {
        RECONCILE_NAME            = var.ledger_region
        RECONCILE_HTTP_ADDR       = "0.0.0.0:8090"
        RECONCILE_KAFKA_BOOTSTRAP = module.msk.bootstrap_brokers_tls
      }
      secrets = {
        RECONCILE_NODE_API_KEY   = aws_secretsmanager_secret.this["api-key"].arn
        RECONCILE_SESSION_SECRET = aws_secretsmanager_secret.this["session-secret"].arn
        PGPASSWORD               = aws_secretsmanager_secret.this["db-password"].arn
      }
    }
    # The replicator serves nothing but its health and metrics, so the ALB does not route to it;
    # ECS replaces a task whose process exits.
    replicator = {
      port          = 9100
      health_path   = "/healthz"
      desired_count = 1
      cpu           = 512
      memory        = 1024
      load_balanced = false
      environment = {
        LEDGER_REPLICATOR_TARGET_REGION    = var.ledger_region
        LEDGER_REPLICATOR_TARGET_BOOTSTRAP = module.msk.bootstrap_brokers_tls
        LEDGER_REPLICATOR_METRICS_ADDR     = "0.0.0.0:9100"
        LEDGER_REPLICATOR_PEERS            = join(",", var.peers)
      }
    }
  }
}

# The region's own global cluster and its writable primary: the node's database.
module "aurora_global" {
  source         = "../aurora-global"
  name           = local.name
  engine_version = var.aurora_engine_version
}

module "aurora" {
  source                    = "../aurora"
  name                      = local.name
  global_cluster_id         = module.aurora_global.id
  engine_version            = module.aurora_global.engine_version
  is_primary                = true
  master_password           = var.db_master_password
  instance_class            = var.aurora_instance_class
  vpc_id                    = module.network.vpc_id
  subnet_ids                = module.network.private_subnet_ids
  client_security_group_ids = [module.services.tasks_security_group_id]
  kms_key_arn               = module.kms.key_arn
  tags                      = local.tags
}

# Other regions' disaster-recovery copies, hosted in this region's network and encrypted with this
# region's key. No node writes them; a regional failover promotes one, after which the lost region's
# services run here, so this region's tasks may reach it.
module "aurora_dr" {
  source                    = "../aurora"
  for_each                  = var.aurora_dr_secondaries
  name                      = "ledger-${var.environment}-${each.key}-dr"
  global_cluster_id         = each.value.global_cluster_id
  engine_version            = each.value.engine_version
  is_primary                = false
  primary_cluster_arn       = each.value.primary_cluster_arn
  instance_class            = var.aurora_instance_class
  vpc_id                    = module.network.vpc_id
  subnet_ids                = module.network.private_subnet_ids
  client_security_group_ids = [module.services.tasks_security_group_id]
  kms_key_arn               = module.kms.key_arn
  tags                      = merge(local.tags, { "ledger:dr-of" = each.key })
}

module "msk" {
  source                    = "../msk"
  name                      = local.name
  broker_instance_type      = var.msk_broker_instance_type
  vpc_id                    = module.network.vpc_id
  subnet_ids                = slice(module.network.private_subnet_ids, 0, 3)
  client_security_group_ids = [module.services.tasks_security_group_id]
  kms_key_arn               = module.kms.key_arn
  log_retention_days        = var.log_retention_days
  tags                      = local.tags
}

module "alarms" {
  source                    = "../alarms"
  name                      = local.name
  alb_arn_suffix            = module.services.alb_arn_suffix
  target_group_arn_suffixes = module.services.target_group_arn_suffixes
  ecs_cluster_name          = module.services.cluster_name
  ecs_service_names         = keys(module.services.service_names)
  aurora_cluster_id         = module.aurora.cluster_id
  aurora_dr_cluster_ids     = { for r, m in module.aurora_dr : r => m.cluster_id }
  kms_key_arn               = module.kms.key_arn
  tags                      = local.tags
}
