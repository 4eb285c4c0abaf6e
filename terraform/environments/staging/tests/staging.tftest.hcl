# The staging three-region composition, applied against mocked providers (one per region alias).
mock_provider "aws" {
  alias  = "us_east_1"
  source = "../../tests/mocks"
}

mock_provider "aws" {
  alias  = "eu_west_1"
  source = "../../tests/mocks"
}

mock_provider "aws" {
  alias  = "ap_south_1"
  source = "../../tests/mocks"
}

# Every cluster gets an endpoint of its own (the shared mock gives them all one), so that which
# cluster a task definition points at can be told apart.
override_resource {
  target = module.us_east_1.module.aurora.aws_rds_cluster.this
  values = { endpoint = "ledger-staging-us-east-1.cluster-mock.us-east-1.rds.amazonaws.com" }
}

override_resource {
  target = module.us_east_1.module.aurora_dr.aws_rds_cluster.this
  values = { endpoint = "dr-hosted.cluster-mock.us-east-1.rds.amazonaws.com" }
}

override_resource {
  target = module.eu_west_1.module.aurora.aws_rds_cluster.this
  values = { endpoint = "ledger-staging-eu-west-1.cluster-mock.eu-west-1.rds.amazonaws.com" }
}

override_resource {
  target = module.eu_west_1.module.aurora_dr.aws_rds_cluster.this
  values = { endpoint = "dr-hosted.cluster-mock.eu-west-1.rds.amazonaws.com" }
}

override_resource {
  target = module.ap_south_1.module.aurora.aws_rds_cluster.this
  values = { endpoint = "ledger-staging-ap-south-1.cluster-mock.ap-south-1.rds.amazonaws.com" }
}

override_resource {
  target = module.ap_south_1.module.aurora_dr.aws_rds_cluster.this
  values = { endpoint = "dr-hosted.cluster-mock.ap-south-1.rds.amazonaws.com" }
}

variables {
  image_tag          = "v1.2.3"
  image_registry     = "123456789012.dkr.ecr.us-east-1.amazonaws.com/"
  zone_id            = "Z123"
  db_master_password = "not-a-real-password"
  certificate_arns = {
    "us-east-1"  = "arn:aws:acm:us-east-1:123456789012:certificate/a"
    "eu-west-1"  = "arn:aws:acm:eu-west-1:123456789012:certificate/b"
    "ap-south-1" = "arn:aws:acm:ap-south-1:123456789012:certificate/c"
  }
}

run "three_regions_each_health_checked" {
  assert {
    condition     = toset(keys(output.route53_health_check_ids)) == toset(["us-east-1", "eu-west-1", "ap-south-1"])
    error_message = "Route 53 health-checks every region."
  }
  assert {
    condition     = length(output.regions) == 3
    error_message = "The environment describes three regions for the chaos suite."
  }
}

run "a_missing_certificate_is_refused" {
  command = plan

  variables {
    certificate_arns = { "us-east-1" = "arn:aws:acm:us-east-1:123456789012:certificate/a" }
  }

  expect_failures = [var.certificate_arns]
}

run "every_region_commits_to_its_own_writable_primary" {
  command = plan

  assert {
    condition     = toset(keys(output.aurora_primaries)) == toset(["us-east-1", "eu-west-1", "ap-south-1"])
    error_message = "Every region has a cluster of its own."
  }
  assert {
    condition     = alltrue([for r, p in output.aurora_primaries : p.region == r && p.is_primary && p.database_name == "ledger"])
    error_message = "Each region's own cluster is a writable primary, in that region, creating the ledger database."
  }
  assert {
    condition     = alltrue([for r, p in output.aurora_primaries : p.global_cluster_id == "ledger-staging-${r}"]) && length(distinct([for p in values(output.aurora_primaries) : p.global_cluster_id])) == 3
    error_message = "Each region's primary heads a global cluster of its own: three global clusters."
  }
}

run "each_global_cluster_has_one_dr_secondary_in_another_region" {
  command = plan

  assert {
    condition     = length(output.aurora_dr_secondaries) == 3
    error_message = "Three DR secondaries, one per global cluster."
  }
  assert {
    condition     = alltrue([for r, p in output.aurora_primaries : length([for s in output.aurora_dr_secondaries : s if s.global_cluster_id == p.global_cluster_id]) == 1])
    error_message = "Each global cluster has exactly one secondary."
  }
  assert {
    condition     = alltrue([for s in output.aurora_dr_secondaries : !s.is_primary && s.region != s.primary_region && s.region == var.aurora_dr_partners[s.primary_region] && s.global_cluster_id == output.aurora_primaries[s.primary_region].global_cluster_id])
    error_message = "Each secondary is read-only, in its primary's partner region (never the primary's own), and joins that primary's global cluster."
  }
}

run "each_node_points_at_its_own_regions_primary" {
  assert {
    condition     = alltrue([for r, h in output.node_database_hosts : h == output.aurora_primaries[r].endpoint && h == "ledger-staging-${r}.cluster-mock.${r}.rds.amazonaws.com"])
    error_message = "The region-node task definition's PGHOST is its own region's primary writer endpoint."
  }
  assert {
    condition     = length(setintersection(toset(values(output.node_database_hosts)), toset([for s in output.aurora_dr_secondaries : s.endpoint]))) == 0
    error_message = "No node points at a DR secondary."
  }
  assert {
    condition     = alltrue([for i, r in ["us-east-1", "eu-west-1", "ap-south-1"] : output.regions[i].postgres_url == "postgres://ledger_admin@${output.node_database_hosts[r]}:5432/ledger?sslmode=require"])
    error_message = "The environment's postgres_url of each region is its node's database."
  }
}

run "a_region_as_its_own_partner_is_refused" {
  command = plan

  variables {
    aurora_dr_partners = { "us-east-1" = "us-east-1", "eu-west-1" = "ap-south-1", "ap-south-1" = "eu-west-1" }
  }

  expect_failures = [var.aurora_dr_partners]
}

run "a_region_without_a_partner_is_refused" {
  command = plan

  variables {
    aurora_dr_partners = { "us-east-1" = "eu-west-1", "eu-west-1" = "us-east-1" }
  }

  expect_failures = [var.aurora_dr_partners]
}
