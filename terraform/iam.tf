# Two roles, kept apart: the execution role lets ECS start the task (pull the image, write
# logs, read the config parameter and the partition secrets); the task role is what the
# worker's code uses, limited to the listed buckets, queues and keys.

data "aws_iam_policy_document" "ecs_tasks_assume" {
  statement {
    effect  = "Allow"
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["ecs-tasks.amazonaws.com"]
    }

    # Confused-deputy guard: only ECS acting for this account.
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [data.aws_caller_identity.current.account_id]
    }
  }
}

# ---------------------------------------------------------------------------------------
# Task role: what s3ferry itself may do
# ---------------------------------------------------------------------------------------

resource "aws_iam_role" "task" {
  name               = "${var.name}-task"
  description        = "s3ferry workers: read source buckets, write destination buckets, consume the job queue"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
  tags               = local.tags
}

data "aws_iam_policy_document" "task" {
  # Read source objects (and their versions, tags and checksums), never write them.
  dynamic "statement" {
    for_each = length(var.source_bucket_arns) > 0 ? [1] : []
    content {
      sid    = "ReadSourceObjects"
      effect = "Allow"
      actions = [
        "s3:GetObject",
        "s3:GetObjectAttributes",
        "s3:GetObjectTagging",
        "s3:GetObjectVersion",
        "s3:GetObjectVersionAttributes",
        "s3:GetObjectVersionTagging",
      ]
      resources = [for arn in var.source_bucket_arns : "${arn}/*"]
    }
  }

  dynamic "statement" {
    for_each = length(var.source_bucket_arns) > 0 ? [1] : []
    content {
      sid    = "ListSourceBuckets"
      effect = "Allow"
      actions = [
        "s3:GetBucketLocation",
        "s3:ListBucket",
        "s3:ListBucketVersions",
      ]
      resources = var.source_bucket_arns
    }
  }

  # Write destination objects by single PUT or multipart upload, and read them back for
  # verification (HEAD needs s3:GetObject; a missing key answers 404, not 403, with
  # s3:ListBucket).
  dynamic "statement" {
    for_each = length(var.destination_bucket_arns) > 0 ? [1] : []
    content {
      sid    = "WriteDestinationObjects"
      effect = "Allow"
      actions = [
        "s3:AbortMultipartUpload",
        "s3:GetObject",
        "s3:GetObjectTagging",
        "s3:ListMultipartUploadParts",
        "s3:PutObject",
        "s3:PutObjectTagging",
      ]
      resources = [for arn in var.destination_bucket_arns : "${arn}/*"]
    }
  }

  dynamic "statement" {
    for_each = length(var.destination_bucket_arns) > 0 ? [1] : []
    content {
      sid    = "ListDestinationBuckets"
      effect = "Allow"
      actions = [
        "s3:GetBucketLocation",
        "s3:ListBucket",
        "s3:ListBucketMultipartUploads",
      ]
      resources = var.destination_bucket_arns
    }
  }

  # Jobs: receive, extend the lease, delete when done, send (retries, fan-out, DLQ).
  statement {
    sid    = "ConsumeQueues"
    effect = "Allow"
    actions = [
      "sqs:ChangeMessageVisibility",
      "sqs:DeleteMessage",
      "sqs:GetQueueAttributes",
      "sqs:GetQueueUrl",
      "sqs:ReceiveMessage",
      "sqs:SendMessage",
    ]
    resources = local.queue_arns
  }

  # SSE-KMS objects and a customer managed queue key.
  dynamic "statement" {
    for_each = length(local.task_kms_key_arns) > 0 ? [1] : []
    content {
      sid       = "UseDataKeys"
      effect    = "Allow"
      actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
      resources = local.task_kms_key_arns
    }
  }
}

locals {
  task_kms_key_arns = distinct(compact(concat(var.kms_key_arns, [var.sqs_kms_key_arn])))
}

resource "aws_iam_role_policy" "task" {
  name   = "s3ferry-data-access"
  role   = aws_iam_role.task.id
  policy = data.aws_iam_policy_document.task.json
}

# ---------------------------------------------------------------------------------------
# Task execution role: what ECS needs to start the containers
# ---------------------------------------------------------------------------------------

resource "aws_iam_role" "execution" {
  name               = "${var.name}-execution"
  description        = "ECS starts s3ferry tasks: image pull, logs, config parameter, partition secrets"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
  tags               = local.tags
}

resource "aws_iam_role_policy_attachment" "execution_managed" {
  role       = aws_iam_role.execution.name
  policy_arn = "arn:${data.aws_partition.current.partition}:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy"
}

data "aws_iam_policy_document" "execution" {
  statement {
    sid       = "ReadConfigParameter"
    effect    = "Allow"
    actions   = ["ssm:GetParameters"]
    resources = [aws_ssm_parameter.config.arn]
  }

  dynamic "statement" {
    for_each = length(var.partition_credentials) > 0 ? [1] : []
    content {
      sid       = "ReadPartitionCredentials"
      effect    = "Allow"
      actions   = ["secretsmanager:GetSecretValue"]
      resources = distinct([for c in var.partition_credentials : c.secret_arn])
    }
  }

  dynamic "statement" {
    for_each = var.intake_enabled && var.intake_token_secret_arn != null ? [1] : []
    content {
      sid       = "ReadIntakeToken"
      effect    = "Allow"
      actions   = ["secretsmanager:GetSecretValue"]
      resources = [var.intake_token_secret_arn]
    }
  }

  dynamic "statement" {
    for_each = length(var.secrets_kms_key_arns) > 0 ? [1] : []
    content {
      sid       = "DecryptSecrets"
      effect    = "Allow"
      actions   = ["kms:Decrypt"]
      resources = var.secrets_kms_key_arns
    }
  }
}

resource "aws_iam_role_policy" "execution" {
  name   = "s3ferry-task-start"
  role   = aws_iam_role.execution.id
  policy = data.aws_iam_policy_document.execution.json
}
