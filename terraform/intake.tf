# Optional: the intake service (`s3ferry serve`). One task that lists the routes' buckets on
# request and enqueues copy jobs for the workers; `s3ferry backfill --server URL` calls it.
#
# One task, never two: a backfill runs inside the task that accepted it and each task refuses
# only overlapping backfills it runs itself, so a deployment stops the old task before it
# starts the new one. A backfill cut short is "interrupted" and safe to start again.

locals {
  intake_count = var.intake_enabled ? 1 : 0

  # The workers' plain settings without the worker-only ones, plus where to listen.
  intake_environment = merge(
    { for k, v in local.worker_environment : k => v if !startswith(k, "S3FERRY_WORKER__") },
    {
      S3FERRY_DISPATCHER__INTAKE_HOST = "0.0.0.0"
      S3FERRY_DISPATCHER__INTAKE_PORT = tostring(var.intake_port)
    },
  )

  intake_container = merge(local.app_container, {
    name    = "intake"
    command = ["serve"]
    portMappings = [
      { name = "intake", containerPort = var.intake_port, protocol = "tcp" },
      { name = "metrics", containerPort = var.metrics_port, protocol = "tcp" },
    ]
    environment = [for k in sort(keys(local.intake_environment)) : { name = k, value = local.intake_environment[k] }]
    # The bearer token and the partition keys come from Secrets Manager, never from here.
    secrets = concat(local.worker_secrets, var.intake_token_secret_arn == null ? [] : [
      { name = "S3FERRY_DISPATCHER__INTAKE_TOKEN", valueFrom = var.intake_token_secret_arn },
    ])
    healthCheck = merge(local.health_check, {
      command = [
        "CMD", "python", "-c",
        "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ['S3FERRY_DISPATCHER__INTAKE_PORT'], timeout=4)",
      ]
    })
    logConfiguration = {
      logDriver = "awslogs"
      options   = merge(local.log_options, { "awslogs-stream-prefix" = "intake" })
    }
  })
}

resource "aws_security_group" "intake" {
  count       = local.intake_count
  name        = "${var.name}-intake"
  description = "s3ferry intake task: HTTPS out, the intake API and metrics in from the listed CIDRs"
  vpc_id      = var.vpc_id
  tags        = local.tags
}

resource "aws_vpc_security_group_egress_rule" "intake_https" {
  count             = local.intake_count
  security_group_id = aws_security_group.intake[0].id
  description       = "HTTPS to AWS APIs and S3-compatible endpoints"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = "0.0.0.0/0"
}

resource "aws_vpc_security_group_ingress_rule" "intake_api" {
  for_each          = var.intake_enabled ? toset(var.intake_ingress_cidr_blocks) : toset([])
  security_group_id = aws_security_group.intake[0].id
  description       = "Callers of the intake API (bearer token required)"
  ip_protocol       = "tcp"
  from_port         = var.intake_port
  to_port           = var.intake_port
  cidr_ipv4         = each.value
}

resource "aws_vpc_security_group_ingress_rule" "intake_metrics" {
  for_each          = var.intake_enabled ? toset(var.metrics_ingress_cidr_blocks) : toset([])
  security_group_id = aws_security_group.intake[0].id
  description       = "Prometheus scrape of /metrics"
  ip_protocol       = "tcp"
  from_port         = var.metrics_port
  to_port           = var.metrics_port
  cidr_ipv4         = each.value
}

resource "aws_ecs_task_definition" "intake" {
  count                    = local.intake_count
  family                   = "${var.name}-intake"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = 512
  memory                   = 1024
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.task.arn

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = var.cpu_architecture
  }

  volume {
    name = "config"
  }

  volume {
    name = "tmp"
  }

  container_definitions = jsonencode([local.config_writer, local.intake_container])

  tags = local.tags

  lifecycle {
    precondition {
      condition     = var.intake_token_secret_arn != null
      error_message = "Set intake_token_secret_arn when intake_enabled: the intake refuses to start without a token."
    }
  }
}

resource "aws_service_discovery_service" "intake" {
  count = var.intake_enabled && var.intake_namespace_id != null ? 1 : 0
  name  = "intake"

  dns_config {
    namespace_id   = var.intake_namespace_id
    routing_policy = "MULTIVALUE"
    dns_records {
      ttl  = 10
      type = "A"
    }
  }

  health_check_custom_config {
    failure_threshold = 1
  }

  tags = local.tags
}

resource "aws_ecs_service" "intake" {
  count            = local.intake_count
  name             = "${var.name}-intake"
  cluster          = local.cluster_arn
  task_definition  = aws_ecs_task_definition.intake[0].arn
  desired_count    = 1
  launch_type      = "FARGATE"
  platform_version = "LATEST"

  # Stop the old task before starting the new one: never two intakes at once.
  deployment_minimum_healthy_percent = 0
  deployment_maximum_percent         = 100
  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }

  network_configuration {
    subnets          = var.subnet_ids
    security_groups  = [aws_security_group.intake[0].id]
    assign_public_ip = var.assign_public_ip
  }

  dynamic "service_registries" {
    for_each = aws_service_discovery_service.intake
    content {
      registry_arn = service_registries.value.arn
    }
  }

  enable_ecs_managed_tags = true
  propagate_tags          = "SERVICE"
  tags                    = local.tags

  depends_on = [aws_ecs_cluster_capacity_providers.this, aws_iam_role_policy.execution]
}
