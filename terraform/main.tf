# s3ferry on AWS: the job queue and its dead-letter queue, an optional queue for S3 event
# notifications, and the Fargate worker service that consumes the jobs.
#
#   main.tf      locals, the queues
#   iam.tf       task role (data access, least privilege) and task execution role
#   ecs.tf       config parameter, log group, cluster, security group, task definition, service
#   scaling.tf   Application Auto Scaling on the job queue's depth
#   intake.tf    optional: `s3ferry serve`, backfills on request (one task)
#
# No provider block: configure the aws provider (region, credentials, default_tags) in the
# calling configuration, or through the environment when applying this directory directly.

data "aws_partition" "current" {}
data "aws_region" "current" {}
data "aws_caller_identity" "current" {}

locals {
  tags = merge({ "app.kubernetes.io/name" = "s3ferry", "s3ferry/deployment" = var.name }, var.tags)

  # Queues: SSE-SQS unless a customer managed key is given.
  sqs_sse_managed = var.sqs_kms_key_arn == null

  # 14 days, the SQS maximum: time to look at a failed job and redrive it.
  dlq_retention_seconds = 1209600

  queue_arns = concat(
    [aws_sqs_queue.jobs.arn, aws_sqs_queue.jobs_dlq.arn],
    var.create_events_queue ? [aws_sqs_queue.events[0].arn, aws_sqs_queue.events_dlq[0].arn] : [],
  )
}

# ---------------------------------------------------------------------------------------
# Job queue and its dead-letter queue
# ---------------------------------------------------------------------------------------

resource "aws_sqs_queue" "jobs_dlq" {
  name                              = "${var.name}-jobs-dlq"
  message_retention_seconds         = local.dlq_retention_seconds
  sqs_managed_sse_enabled           = local.sqs_sse_managed ? true : null
  kms_master_key_id                 = var.sqs_kms_key_arn
  kms_data_key_reuse_period_seconds = local.sqs_sse_managed ? null : 300
  tags                              = local.tags
}

resource "aws_sqs_queue" "jobs" {
  name                              = "${var.name}-jobs"
  visibility_timeout_seconds        = var.visibility_timeout_seconds
  message_retention_seconds         = var.message_retention_seconds
  receive_wait_time_seconds         = 20
  sqs_managed_sse_enabled           = local.sqs_sse_managed ? true : null
  kms_master_key_id                 = var.sqs_kms_key_arn
  kms_data_key_reuse_period_seconds = local.sqs_sse_managed ? null : 300

  # A job received max_receive_count times without being deleted (worker crashed, source
  # unreadable, ...) goes to the DLQ instead of looping.
  redrive_policy = jsonencode({
    deadLetterTargetArn = aws_sqs_queue.jobs_dlq.arn
    maxReceiveCount     = var.max_receive_count
  })

  tags = local.tags
}

resource "aws_sqs_queue_redrive_allow_policy" "jobs_dlq" {
  queue_url = aws_sqs_queue.jobs_dlq.id
  redrive_allow_policy = jsonencode({
    redrivePermission = "byQueue"
    sourceQueueArns   = [aws_sqs_queue.jobs.arn]
  })
}

# ---------------------------------------------------------------------------------------
# Optional: queue for S3 event notifications (`s3ferry events`)
# ---------------------------------------------------------------------------------------

resource "aws_sqs_queue" "events_dlq" {
  count                             = var.create_events_queue ? 1 : 0
  name                              = "${var.name}-events-dlq"
  message_retention_seconds         = local.dlq_retention_seconds
  sqs_managed_sse_enabled           = local.sqs_sse_managed ? true : null
  kms_master_key_id                 = var.sqs_kms_key_arn
  kms_data_key_reuse_period_seconds = local.sqs_sse_managed ? null : 300
  tags                              = local.tags
}

resource "aws_sqs_queue" "events" {
  count = var.create_events_queue ? 1 : 0
  name  = "${var.name}-events"
  # S3 cannot notify FIFO queues: a standard queue. With a customer managed key, its key
  # policy must let s3.amazonaws.com use kms:GenerateDataKey and kms:Decrypt.
  visibility_timeout_seconds        = 60
  message_retention_seconds         = var.message_retention_seconds
  receive_wait_time_seconds         = 20
  sqs_managed_sse_enabled           = local.sqs_sse_managed ? true : null
  kms_master_key_id                 = var.sqs_kms_key_arn
  kms_data_key_reuse_period_seconds = local.sqs_sse_managed ? null : 300

  redrive_policy = jsonencode({
    deadLetterTargetArn = aws_sqs_queue.events_dlq[0].arn
    maxReceiveCount     = var.max_receive_count
  })

  tags = local.tags
}

data "aws_iam_policy_document" "events_queue" {
  count = var.create_events_queue ? 1 : 0

  statement {
    sid       = "AllowS3EventNotificationsFromSourceBuckets"
    effect    = "Allow"
    actions   = ["sqs:SendMessage"]
    resources = [aws_sqs_queue.events[0].arn]

    principals {
      type        = "Service"
      identifiers = ["s3.amazonaws.com"]
    }

    condition {
      test     = "ArnLike"
      variable = "aws:SourceArn"
      values   = var.events_source_bucket_arns
    }

    dynamic "condition" {
      for_each = length(var.events_source_account_ids) > 0 ? [1] : []
      content {
        test     = "StringEquals"
        variable = "aws:SourceAccount"
        values   = var.events_source_account_ids
      }
    }
  }
}

resource "aws_sqs_queue_policy" "events" {
  count     = var.create_events_queue ? 1 : 0
  queue_url = aws_sqs_queue.events[0].id
  policy    = data.aws_iam_policy_document.events_queue[0].json

  lifecycle {
    precondition {
      condition     = length(var.events_source_bucket_arns) > 0
      error_message = "create_events_queue needs events_source_bucket_arns: the queue policy admits only those buckets."
    }
  }
}
