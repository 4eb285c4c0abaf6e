# The region's outbox stream: the replicator reads committed transfers from it and ships them to the
# other regions. Losing an acknowledged record would lose a transfer for the other regions, so a
# write is acknowledged only once two of the three brokers have it.
resource "aws_msk_configuration" "this" {
  name           = var.name
  kafka_versions = [var.kafka_version]
  server_properties = join("\n", [
    "default.replication.factor=3",
    "min.insync.replicas=2",
    "auto.create.topics.enable=false",
    # An out-of-sync replica must never become leader: it would drop acknowledged transfers.
    "unclean.leader.election.enable=false",
  ])
}

resource "aws_security_group" "this" {
  name        = "${var.name}-msk"
  description = "MSK brokers of ${var.name}: reachable from the ledger services only"
  vpc_id      = var.vpc_id
  tags        = var.tags
}

resource "aws_security_group_rule" "clients" {
  count                    = length(var.client_security_group_ids)
  type                     = "ingress"
  description              = "Kafka over TLS from the ledger ECS services"
  security_group_id        = aws_security_group.this.id
  from_port                = 9094
  to_port                  = 9094
  protocol                 = "tcp"
  source_security_group_id = var.client_security_group_ids[count.index]
}

resource "aws_cloudwatch_log_group" "brokers" {
  name              = "/ledger/${var.name}/msk"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.kms_key_arn
  tags              = var.tags
}

resource "aws_msk_cluster" "this" {
  cluster_name           = var.name
  kafka_version          = var.kafka_version
  number_of_broker_nodes = 3

  broker_node_group_info {
    instance_type   = var.broker_instance_type
    client_subnets  = var.subnet_ids
    security_groups = [aws_security_group.this.id]
    ebs_volume_size = var.broker_volume_gb
  }

  configuration_info {
    arn      = aws_msk_configuration.this.arn
    revision = aws_msk_configuration.this.latest_revision
  }

  encryption_info {
    encryption_at_rest_kms_key_arn = var.kms_key_arn
    encryption_in_transit {
      client_broker = "TLS"
      in_cluster    = true
    }
  }

  # No client authentication: provider 3.39 knows only SCRAM and mutual TLS (IAM authentication,
  # the intended one, needs a newer provider: see modules/beyond-3-39). Until then the brokers
  # accept TLS connections from the services' security group only.

  logging_info {
    broker_logs {
      cloudwatch_logs {
        enabled   = true
        log_group = aws_cloudwatch_log_group.brokers.name
      }
    }
  }

  tags = var.tags
}
