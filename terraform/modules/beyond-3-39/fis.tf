# Fault injection experiments for the chaos suite's cloud runs: stop region-node tasks, fail one
# region's database over to its disaster-recovery secondary in the partner region, and cut a
# region's network off from another region.
# Each stops itself when var.stop_alarm_arn fires.

data "aws_iam_policy_document" "fis_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["fis.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "fis" {
  name               = "${var.name}-fis"
  assume_role_policy = data.aws_iam_policy_document.fis_assume.json
}

data "aws_iam_policy_document" "fis" {
  statement {
    sid       = "StopLedgerTasks"
    actions   = ["ecs:StopTask", "ecs:DescribeTasks", "ecs:ListTasks"]
    resources = ["*"]
    condition {
      test     = "ArnEquals"
      variable = "ecs:cluster"
      values   = [var.ecs_cluster_arn]
    }
  }
  statement {
    sid       = "FailOverTheGlobalDatabase"
    actions   = ["rds:FailoverGlobalCluster", "rds:DescribeGlobalClusters", "rds:DescribeDBClusters"]
    resources = ["arn:aws:rds::*:global-cluster:${var.global_cluster_id}", var.primary_cluster_arn, var.dr_secondary_cluster_arn]
  }
  statement {
    sid       = "RunTheFailoverDocument"
    actions   = ["ssm:StartAutomationExecution", "ssm:GetAutomationExecution", "ssm:StopAutomationExecution"]
    resources = [var.failover_document_arn, "arn:aws:ssm:*:*:automation-execution/*"]
  }
  statement {
    sid = "DisruptCrossRegionRoutes"
    actions = [
      "ec2:CreateRouteTable", "ec2:CreateRoute", "ec2:AssociateRouteTable", "ec2:DisassociateRouteTable",
      "ec2:DeleteRouteTable", "ec2:DescribeRouteTables", "ec2:DescribeSubnets", "ec2:CreateTags",
    ]
    resources = ["*"]
    condition {
      test     = "StringEquals"
      variable = "aws:ResourceTag/ledger:managed-by"
      values   = ["fis"]
    }
  }
  statement {
    sid       = "WriteExperimentLog"
    actions   = ["logs:CreateLogDelivery", "logs:PutResourcePolicy", "logs:DescribeResourcePolicies", "logs:DescribeLogGroups"]
    resources = [var.experiment_log_group_arn]
  }
}

resource "aws_iam_role_policy" "fis" {
  name   = "ledger-chaos"
  role   = aws_iam_role.fis.id
  policy = data.aws_iam_policy_document.fis.json
}

resource "aws_fis_experiment_template" "stop_nodes" {
  description = "Stop half the region-node tasks of one region; the ALB and Route 53 must route around them."
  role_arn    = aws_iam_role.fis.arn

  stop_condition {
    source = "aws:cloudwatch:alarm"
    value  = var.stop_alarm_arn
  }

  action {
    name      = "stop-region-node-tasks"
    action_id = "aws:ecs:stop-task"
    target {
      key   = "Tasks"
      value = "region-node-tasks"
    }
  }

  target {
    name           = "region-node-tasks"
    resource_type  = "aws:ecs:task"
    selection_mode = "PERCENT(50)"
    parameters = {
      cluster = var.ecs_cluster_arn
      service = "region-node"
    }
  }

  log_configuration {
    log_schema_version = 2
    cloudwatch_logs_configuration {
      log_group_arn = "${var.experiment_log_group_arn}:*"
    }
  }
}

# FIS has no global-cluster failover action; it runs an SSM automation document (var) that calls
# rds:FailoverGlobalCluster, the managed switchover that loses nothing when the regions are in sync.
# Each ledger region heads a global cluster of its own (terraform/README.md), so this drills the
# loss of one region's database: that region's DR secondary, in its partner region, becomes the
# writer and the region's own cluster a read-only secondary. The region's node (PGHOST is its own
# cluster's endpoint) cannot commit until the runbook points it at the promoted cluster or switches
# back; the other regions commit to their own primaries throughout. One region per experiment.
resource "aws_fis_experiment_template" "fail_over_database" {
  description = "Fail one region's Aurora global cluster over to its DR secondary in the partner region."
  role_arn    = aws_iam_role.fis.arn

  stop_condition {
    source = "aws:cloudwatch:alarm"
    value  = var.stop_alarm_arn
  }

  action {
    name      = "fail-over-global-cluster"
    action_id = "aws:ssm:start-automation-execution"
    parameter {
      key   = "documentArn"
      value = var.failover_document_arn
    }
    parameter {
      key = "documentParameters"
      value = jsonencode({
        GlobalClusterIdentifier   = var.global_cluster_id
        TargetDbClusterIdentifier = var.dr_secondary_cluster_arn
      })
    }
    parameter {
      key   = "maxDuration"
      value = "PT20M"
    }
  }

  log_configuration {
    log_schema_version = 2
    cloudwatch_logs_configuration {
      log_group_arn = "${var.experiment_log_group_arn}:*"
    }
  }
}

resource "aws_fis_experiment_template" "partition_regions" {
  description = "Cut one region's subnets off from another region for ten minutes; replication must catch up afterwards."
  role_arn    = aws_iam_role.fis.arn

  stop_condition {
    source = "aws:cloudwatch:alarm"
    value  = var.stop_alarm_arn
  }

  action {
    name      = "disrupt-cross-region"
    action_id = "aws:network:route-table-disrupt-cross-region-connectivity"
    parameter {
      key   = "region"
      value = var.other_region
    }
    parameter {
      key   = "duration"
      value = "PT10M"
    }
    target {
      key   = "Subnets"
      value = "ledger-subnets"
    }
  }

  target {
    name           = "ledger-subnets"
    resource_type  = "aws:ec2:subnet"
    selection_mode = "ALL"
    resource_arns  = var.private_subnet_arns
  }

  log_configuration {
    log_schema_version = 2
    cloudwatch_logs_configuration {
      log_group_arn = "${var.experiment_log_group_arn}:*"
    }
  }
}
