# Values the mocked AWS provider returns instead of random strings, where provider 3.39 validates
# what another resource receives (ARNs, policy JSON). Shared by every *.tftest.hcl through
# mock_provider "aws" { source = ".../terraform/tests/mocks" }.

mock_data "aws_iam_policy_document" {
  defaults = { json = "{}" }
}

mock_data "aws_caller_identity" {
  defaults = { account_id = "123456789012" }
}

mock_data "aws_partition" {
  defaults = { partition = "aws" }
}

mock_resource "aws_kms_key" {
  defaults = { arn = "arn:aws:kms:us-east-1:123456789012:key/mock" }
}

mock_resource "aws_iam_role" {
  defaults = { arn = "arn:aws:iam::123456789012:role/mock" }
}

mock_resource "aws_cloudwatch_log_group" {
  defaults = { arn = "arn:aws:logs:us-east-1:123456789012:log-group:mock" }
}

mock_resource "aws_sns_topic" {
  defaults = { arn = "arn:aws:sns:us-east-1:123456789012:mock" }
}

mock_resource "aws_msk_configuration" {
  defaults = { arn = "arn:aws:kafka:us-east-1:123456789012:configuration/mock/1", latest_revision = 1 }
}

mock_resource "aws_msk_cluster" {
  defaults = { arn = "arn:aws:kafka:us-east-1:123456789012:cluster/mock/1", bootstrap_brokers_tls = "b-1.mock:9094,b-2.mock:9094,b-3.mock:9094" }
}

mock_resource "aws_secretsmanager_secret" {
  defaults = { arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:mock" }
}

mock_resource "aws_rds_cluster" {
  defaults = { arn = "arn:aws:rds:us-east-1:123456789012:cluster:mock", endpoint = "mock.cluster.rds.amazonaws.com" }
}

mock_resource "aws_lb" {
  defaults = { arn = "arn:aws:elasticloadbalancing:us-east-1:123456789012:loadbalancer/app/mock/1", arn_suffix = "app/mock/1", dns_name = "mock.elb.amazonaws.com", zone_id = "Z35SXDOTRQ7X7K" }
}

mock_resource "aws_lb_target_group" {
  defaults = { arn = "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/mock/1", arn_suffix = "targetgroup/mock/1" }
}

mock_resource "aws_lb_listener" {
  defaults = { arn = "arn:aws:elasticloadbalancing:us-east-1:123456789012:listener/app/mock/1/1" }
}

mock_resource "aws_ecs_task_definition" {
  defaults = { arn = "arn:aws:ecs:us-east-1:123456789012:task-definition/mock:1" }
}

mock_resource "aws_ecs_cluster" {
  defaults = { arn = "arn:aws:ecs:us-east-1:123456789012:cluster/mock" }
}
