# The worker service on Fargate.

locals {
  cluster_name = var.create_cluster ? aws_ecs_cluster.this[0].name : var.cluster_name
  cluster_arn  = var.create_cluster ? aws_ecs_cluster.this[0].arn : data.aws_ecs_cluster.existing[0].arn

  config_dir  = "/etc/s3ferry"
  config_path = "/etc/s3ferry/s3ferry.toml"

  log_options = {
    "awslogs-group"  = aws_cloudwatch_log_group.this.name
    "awslogs-region" = data.aws_region.current.name
    # A full log buffer must not block the copy loop.
    "mode"            = "non-blocking"
    "max-buffer-size" = "25m"
  }

  # Plain settings only. Keys arrive through `secrets` below, never here.
  worker_environment = merge(var.extra_environment, {
    S3FERRY_CONFIG                     = local.config_path
    S3FERRY_QUEUE_URL                  = aws_sqs_queue.jobs.url
    S3FERRY_DLQ_URL                    = aws_sqs_queue.jobs_dlq.url
    S3FERRY_QUEUE_ENDPOINT             = var.queue_endpoint
    S3FERRY_METRICS_PORT               = tostring(var.metrics_port)
    S3FERRY_LOG_FORMAT                 = "json"
    S3FERRY_LOG_LEVEL                  = var.log_level
    S3FERRY_WORKER__MAX_JOBS           = tostring(var.worker_max_jobs)
    S3FERRY_WORKER__MAX_PARTS          = tostring(var.worker_max_parts)
    S3FERRY_WORKER__PART_SIZE          = tostring(var.worker_part_size)
    S3FERRY_WORKER__SERVER_COPY_BUDGET = tostring(var.worker_server_copy_budget)
    S3FERRY_WORKER__VISIBILITY_TIMEOUT = tostring(var.visibility_timeout_seconds)
    S3FERRY_WORKER__DRAIN_SECONDS      = tostring(var.drain_seconds)
  })

  # <prefix>AWS_ACCESS_KEY_ID / <prefix>AWS_SECRET_ACCESS_KEY from JSON keys of each secret.
  worker_secrets = flatten([
    for c in var.partition_credentials : [
      { name = "${c.env_prefix}AWS_ACCESS_KEY_ID", valueFrom = "${c.secret_arn}:AWS_ACCESS_KEY_ID::" },
      { name = "${c.env_prefix}AWS_SECRET_ACCESS_KEY", valueFrom = "${c.secret_arn}:AWS_SECRET_ACCESS_KEY::" },
    ]
  ])

  # Fargate has no ConfigMap: a short-lived container writes the TOML from the SSM parameter
  # into a task volume, and the worker starts once it has exited 0.
  config_writer = {
    name                   = "config"
    image                  = var.image
    essential              = false
    user                   = "10001:10001"
    readonlyRootFilesystem = true
    entryPoint             = ["python", "-c"]
    command = [
      "import os, pathlib; pathlib.Path(os.environ['S3FERRY_CONFIG']).write_text(os.environ['S3FERRY_CONFIG_TOML'])",
    ]
    environment = [{ name = "S3FERRY_CONFIG", value = local.config_path }]
    secrets     = [{ name = "S3FERRY_CONFIG_TOML", valueFrom = aws_ssm_parameter.config.arn }]
    mountPoints = [{ sourceVolume = "config", containerPath = local.config_dir, readOnly = false }]
    logConfiguration = {
      logDriver = "awslogs"
      options   = merge(local.log_options, { "awslogs-stream-prefix" = "config" })
    }
  }

  # What every long-running s3ferry container shares (the worker's, and the intake's in
  # intake.tf): non-root, read-only root, the config written first, the task volumes.
  app_container = {
    image                  = var.image
    essential              = true
    user                   = "10001:10001"
    readonlyRootFilesystem = true
    # SIGTERM -> s3ferry drains (workers for drain_seconds) -> exit 0; SIGKILL only after this.
    stopTimeout = var.stop_timeout
    dependsOn   = [{ containerName = "config", condition = "SUCCESS" }]
    # An init process forwards SIGTERM to s3ferry and reaps children.
    linuxParameters = { initProcessEnabled = true }
    mountPoints = [
      { sourceVolume = "config", containerPath = local.config_dir, readOnly = true },
      { sourceVolume = "tmp", containerPath = "/tmp", readOnly = false },
    ]
  }

  # How often the containers' health checks run (each fetches a local URL of its own).
  health_check = {
    interval    = 30
    timeout     = 5
    retries     = 3
    startPeriod = 30
  }

  worker_container = merge(local.app_container, {
    name    = "worker"
    command = ["worker"]
    portMappings = [{
      name          = "metrics"
      containerPort = var.metrics_port
      protocol      = "tcp"
    }]
    environment = [for k in sort(keys(local.worker_environment)) : { name = k, value = local.worker_environment[k] }]
    secrets     = local.worker_secrets
    healthCheck = merge(local.health_check, {
      command = [
        "CMD", "python", "-c",
        "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/metrics' % os.environ['S3FERRY_METRICS_PORT'], timeout=4)",
      ]
    })
    logConfiguration = {
      logDriver = "awslogs"
      options   = merge(local.log_options, { "awslogs-stream-prefix" = "worker" })
    }
  })
}

# ---------------------------------------------------------------------------------------
# Configuration: the endpoints TOML
# ---------------------------------------------------------------------------------------

resource "aws_ssm_parameter" "config" {
  #checkov:skip=CKV_AWS_337:The TOML names endpoints and holds no keys (those come from Secrets Manager); SecureString under the AWS managed key is enough.
  name        = "/${var.name}/endpoints.toml"
  description = "s3ferry endpoints TOML (S3FERRY_CONFIG); no keys, those come from Secrets Manager"
  type        = "SecureString"
  tier        = length(var.endpoints_toml) > 4096 ? "Advanced" : "Standard"
  value       = var.endpoints_toml
  tags        = local.tags
}

# ---------------------------------------------------------------------------------------
# Logs
# ---------------------------------------------------------------------------------------

resource "aws_cloudwatch_log_group" "this" {
  #checkov:skip=CKV_AWS_158:KMS is optional (log_kms_key_arn); CloudWatch Logs encrypts at rest by default and the logs hold no keys or presigned URLs.
  #checkov:skip=CKV_AWS_338:Operational logs; retention is the log_retention_days variable (30 days by default), not an audit trail.
  name              = "/ecs/${var.name}"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.log_kms_key_arn
  tags              = local.tags
}

# ---------------------------------------------------------------------------------------
# Cluster
# ---------------------------------------------------------------------------------------

resource "aws_ecs_cluster" "this" {
  count = var.create_cluster ? 1 : 0
  name  = var.name

  setting {
    name  = "containerInsights"
    value = "enabled"
  }

  tags = local.tags
}

resource "aws_ecs_cluster_capacity_providers" "this" {
  count              = var.create_cluster ? 1 : 0
  cluster_name       = aws_ecs_cluster.this[0].name
  capacity_providers = ["FARGATE", "FARGATE_SPOT"]
}

data "aws_ecs_cluster" "existing" {
  count        = var.create_cluster ? 0 : 1
  cluster_name = var.cluster_name
}

# ---------------------------------------------------------------------------------------
# Network: HTTPS out (S3, SQS, ECR, Secrets Manager, SSM, other S3 endpoints); metrics in
# ---------------------------------------------------------------------------------------

resource "aws_security_group" "worker" {
  name        = "${var.name}-worker"
  description = "s3ferry worker tasks: HTTPS out, Prometheus metrics in from the listed CIDRs"
  vpc_id      = var.vpc_id
  tags        = local.tags
}

resource "aws_vpc_security_group_egress_rule" "https" {
  security_group_id = aws_security_group.worker.id
  description       = "HTTPS to AWS APIs and S3-compatible endpoints"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = "0.0.0.0/0"
}

resource "aws_vpc_security_group_ingress_rule" "metrics" {
  for_each          = toset(var.metrics_ingress_cidr_blocks)
  security_group_id = aws_security_group.worker.id
  description       = "Prometheus scrape of /metrics"
  ip_protocol       = "tcp"
  from_port         = var.metrics_port
  to_port           = var.metrics_port
  cidr_ipv4         = each.value
}

# ---------------------------------------------------------------------------------------
# Task definition and service
# ---------------------------------------------------------------------------------------

resource "aws_ecs_task_definition" "worker" {
  family                   = "${var.name}-worker"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = var.task_cpu
  memory                   = var.task_memory
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.task.arn

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = var.cpu_architecture
  }

  # Task-scoped scratch volumes; the image declares both paths as VOLUMEs owned by its
  # non-root user, so they stay writable under a read-only root filesystem.
  volume {
    name = "config"
  }

  volume {
    name = "tmp"
  }

  container_definitions = jsonencode([local.config_writer, local.worker_container])

  tags = local.tags

  lifecycle {
    precondition {
      condition     = var.drain_seconds < var.stop_timeout
      error_message = "drain_seconds must be below stop_timeout, or ECS kills workers before they release their messages."
    }
    precondition {
      condition     = var.task_memory >= ceil(var.worker_part_size * var.worker_max_parts / 1048576) + 150
      error_message = "task_memory is below worker_part_size x worker_max_parts + 150 MiB."
    }
  }
}

resource "aws_ecs_service" "worker" {
  name             = "${var.name}-worker"
  cluster          = local.cluster_arn
  task_definition  = aws_ecs_task_definition.worker.arn
  desired_count    = var.min_capacity
  launch_type      = var.fargate_spot_weight > 0 ? null : "FARGATE"
  platform_version = "LATEST"

  # Start new tasks before stopping old ones; roll back a deployment that cannot start.
  deployment_minimum_healthy_percent = 100
  deployment_maximum_percent         = 200
  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }

  dynamic "capacity_provider_strategy" {
    for_each = var.fargate_spot_weight > 0 ? { FARGATE = 1, FARGATE_SPOT = var.fargate_spot_weight } : {}
    content {
      capacity_provider = capacity_provider_strategy.key
      weight            = capacity_provider_strategy.value
    }
  }

  network_configuration {
    subnets          = var.subnet_ids
    security_groups  = [aws_security_group.worker.id]
    assign_public_ip = var.assign_public_ip
  }

  enable_ecs_managed_tags = true
  propagate_tags          = "SERVICE"
  tags                    = local.tags

  # Application Auto Scaling owns the task count after creation.
  lifecycle {
    ignore_changes = [desired_count]

    precondition {
      condition     = var.create_cluster || var.cluster_name != null
      error_message = "Set cluster_name when create_cluster is false."
    }
  }

  depends_on = [aws_ecs_cluster_capacity_providers.this, aws_iam_role_policy.execution]
}
