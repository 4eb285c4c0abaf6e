"""Inspects what `terraform apply` made inside moto, through the AWS API rather than Terraform's
own state, and lifts deletion protection before `terraform destroy` (as an operator must).

usage: check.py verify|unprotect ENDPOINT OUTPUTS_JSON
"""
import json
import sys

import boto3

cmd, endpoint, outputs_path = sys.argv[1:4]
out = {k: v["value"] for k, v in json.load(open(outputs_path)).items()}
kw = dict(endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test")
rds, ecs, elb, r53, logs = (boto3.client(s, **kw) for s in ("rds", "ecs", "elbv2", "route53", "logs"))
failures = []


def expect(what, ok):
    print(f"  {'ok  ' if ok else 'FAIL'} {what}")
    if not ok:
        failures.append(what)


if cmd == "verify":
    c = rds.describe_db_clusters(DBClusterIdentifier=out["aurora_cluster_id"])["DBClusters"][0]
    expect("Aurora cluster: storage encrypted with a KMS key", c["StorageEncrypted"] and c.get("KmsKeyId", "").startswith("arn:aws:kms:"))
    expect("Aurora cluster: deletion protection", c["DeletionProtection"])
    expect("Aurora cluster: 35 days of backups", c["BackupRetentionPeriod"] == 35)
    expect("Aurora cluster: aurora-postgresql 15", c["Engine"] == "aurora-postgresql" and c["EngineVersion"].startswith("15."))
    expect("Aurora cluster: two instances", len(c["DBClusterMembers"]) == 2)
    g = rds.describe_global_clusters(GlobalClusterIdentifier=out["global_cluster_id"])["GlobalClusters"][0]
    expect("Aurora global cluster: the regional cluster is its writer",
           [m["IsWriter"] for m in g["GlobalClusterMembers"] if m["DBClusterArn"] == c["DBClusterArn"]] == [True])

    services = ecs.describe_services(cluster=out["ecs_cluster_name"], services=out["ecs_services"])["services"]
    expect("ECS: every service exists on Fargate", sorted(s["serviceName"] for s in services) == sorted(out["ecs_services"])
           and all(s["launchType"] == "FARGATE" for s in services))
    node = next(s for s in services if s["serviceName"] == "region-node")
    expect("ECS: region-node is behind the ALB", len(node["loadBalancers"]) == 1)
    td = ecs.describe_task_definition(taskDefinition=node["taskDefinition"])["taskDefinition"]
    expect("ECS: region-node runs ledger/region-node:<tag>", td["containerDefinitions"][0]["image"] == "ledger/region-node:moto-check")
    env = {e["name"]: e["value"] for e in td["containerDefinitions"][0].get("environment", [])}
    expect("ECS: region-node's PGHOST is its own Aurora cluster's writer endpoint", env.get("PGHOST") == c["Endpoint"])
    expect("ALB exists", len(elb.describe_load_balancers(LoadBalancerArns=[out["alb_arn"]])["LoadBalancers"]) == 1)
    tgs = elb.describe_target_groups(LoadBalancerArn=out["alb_arn"])["TargetGroups"]
    expect("ALB: target group health check on /readyz", [t["HealthCheckPath"] for t in tgs] == ["/readyz"])

    records = r53.list_resource_record_sets(HostedZoneId=out["zone_id"])["ResourceRecordSets"]
    latency = {r["Region"]: r for r in records if r["Type"] == "A" and "Region" in r}
    expect("Route 53: a latency record per region", sorted(latency) == sorted(out["health_check_ids"]))
    expect("Route 53: each latency record has its region's health check",
           all(latency[r].get("HealthCheckId") == hc for r, hc in out["health_check_ids"].items()))
    for r, hc in out["health_check_ids"].items():
        cfg = r53.get_health_check(HealthCheckId=hc)["HealthCheck"]["HealthCheckConfig"]
        expect(f"Route 53: {r} health check probes HTTPS /readyz", cfg["Type"] == "HTTPS" and cfg["ResourcePath"] == "/readyz")

    groups = logs.describe_log_groups(logGroupNamePrefix="/ledger/")["logGroups"]
    expect("CloudWatch Logs: every ledger log group has a retention and a KMS key",
           len(groups) > 0 and all(g.get("retentionInDays", 0) >= 365 and g.get("kmsKeyId") for g in groups))
    alarms = boto3.client("cloudwatch", **kw).describe_alarms(AlarmNames=out["alarm_names"])["MetricAlarms"]
    expect("CloudWatch: every alarm exists", len(alarms) == len(out["alarm_names"]))
elif cmd == "unprotect":
    rds.modify_db_cluster(DBClusterIdentifier=out["aurora_cluster_id"], DeletionProtection=False, ApplyImmediately=True)
    # The global cluster's protection too, on AWS (modify_global_cluster); moto does not implement
    # that call, nor enforce the protection on delete.
    elb.modify_load_balancer_attributes(LoadBalancerArn=out["alb_arn"],
                                        Attributes=[{"Key": "deletion_protection.enabled", "Value": "false"}])
    print("  deletion protection lifted on the Aurora cluster and the ALB")
else:
    sys.exit(__doc__)

sys.exit(1 if failures else 0)
