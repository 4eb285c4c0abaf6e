mock_provider "aws" {
  source = "../../tests/mocks"
}

variables {
  name               = "ledger-test-us-east-1"
  lb_name            = "ledger-test"
  region             = "us-east-1"
  vpc_id             = "vpc-1"
  vpc_cidr           = "10.10.0.0/16"
  public_subnet_ids  = ["subnet-p1", "subnet-p2", "subnet-p3"]
  private_subnet_ids = ["subnet-a", "subnet-b", "subnet-c"]
  certificate_arn    = "arn:aws:acm:us-east-1:123456789012:certificate/test"
  image_tag          = "v1.2.3"
  kms_key_arn        = "arn:aws:kms:us-east-1:123456789012:key/test"
  secret_arns        = ["arn:aws:secretsmanager:us-east-1:123456789012:secret:api-key"]
  services = {
    region-node = { port = 8080, health_path = "/readyz", desired_count = 3, cpu = 1024, memory = 2048, load_balanced = true }
    reconcile   = { port = 8090, health_path = "/healthz", desired_count = 2, cpu = 512, memory = 1024, load_balanced = true, host_header = "reconcile.example.com" }
    replicator  = { port = 9100, health_path = "/healthz", desired_count = 1, cpu = 512, memory = 1024, load_balanced = false }
  }
}

run "images_logs_and_routing" {
  command = plan

  assert {
    condition     = jsondecode(aws_ecs_task_definition.this["region-node"].container_definitions)[0].image == "ledger/region-node:v1.2.3"
    error_message = "Tasks run ledger/<service>:<image_tag>."
  }
  assert {
    condition     = alltrue([for k, td in aws_ecs_task_definition.this : jsondecode(td.container_definitions)[0].image == "ledger/${k}:v1.2.3"])
    error_message = "Every service runs its own image at the released tag."
  }
  assert {
    condition     = alltrue([for g in aws_cloudwatch_log_group.service : g.retention_in_days == 365 && g.kms_key_id == var.kms_key_arn])
    error_message = "Service logs are kept a year, encrypted."
  }
  assert {
    condition     = aws_lb_target_group.this["region-node"].health_check[0].path == "/readyz"
    error_message = "The ALB routes only to nodes that are ready."
  }
  assert {
    condition     = !contains(keys(aws_lb_target_group.this), "replicator")
    error_message = "The replicator is not behind the ALB."
  }
  assert {
    condition     = aws_lb_listener.https.protocol == "HTTPS" && aws_lb.this.drop_invalid_header_fields
    error_message = "The ALB serves HTTPS only."
  }
  assert {
    condition     = alltrue([for s in aws_ecs_service.this : s.launch_type == "FARGATE" && s.network_configuration[0].assign_public_ip == false])
    error_message = "Tasks run on Fargate without public addresses."
  }
}

run "latest_tag_is_refused" {
  command = plan

  variables {
    image_tag = "latest"
  }

  expect_failures = [var.image_tag]
}

run "short_log_retention_is_refused" {
  command = plan

  variables {
    log_retention_days = 30
  }

  expect_failures = [var.log_retention_days]
}
