# Scale the worker service on the job queue's depth with step scaling:
#
# - out: while messages wait (ApproximateNumberOfMessagesVisible > 0), add tasks, more the
#   deeper the backlog, every scale_out_cooldown seconds until the queue is drained or
#   max_capacity is reached. Step scaling (not target tracking) so the service can also
#   start from zero tasks.
# - in: after scale_in_idle_minutes with no waiting message, remove one task every
#   scale_in_cooldown seconds down to min_capacity. A stopped task finishes or releases its
#   jobs within drain_seconds (SIGTERM), so scale-in loses no work, though a released large
#   copy starts again elsewhere: scale in slowly.
#
# SQS stops publishing metrics for a queue idle for about six hours; missing data counts as
# "no backlog" for scale-out and as "idle" for scale-in.

locals {
  scaling_resource_id = "service/${local.cluster_name}/${aws_ecs_service.worker.name}"
}

resource "aws_appautoscaling_target" "worker" {
  service_namespace  = "ecs"
  resource_id        = local.scaling_resource_id
  scalable_dimension = "ecs:service:DesiredCount"
  min_capacity       = var.min_capacity
  max_capacity       = var.max_capacity

  lifecycle {
    precondition {
      condition     = var.min_capacity >= 0 && var.min_capacity <= var.max_capacity
      error_message = "min_capacity must be between 0 and max_capacity."
    }
  }
}

resource "aws_appautoscaling_policy" "scale_out" {
  name               = "${var.name}-backlog-scale-out"
  policy_type        = "StepScaling"
  service_namespace  = aws_appautoscaling_target.worker.service_namespace
  resource_id        = aws_appautoscaling_target.worker.resource_id
  scalable_dimension = aws_appautoscaling_target.worker.scalable_dimension

  step_scaling_policy_configuration {
    adjustment_type         = "ChangeInCapacity"
    cooldown                = var.scale_out_cooldown
    metric_aggregation_type = "Maximum"

    # Bounds are relative to the alarm threshold (0.5 messages).
    step_adjustment {
      metric_interval_lower_bound = 0
      metric_interval_upper_bound = var.backlog_per_task * 4
      scaling_adjustment          = 1
    }
    step_adjustment {
      metric_interval_lower_bound = var.backlog_per_task * 4
      metric_interval_upper_bound = var.backlog_per_task * 20
      scaling_adjustment          = 3
    }
    step_adjustment {
      metric_interval_lower_bound = var.backlog_per_task * 20
      scaling_adjustment          = 10
    }
  }
}

resource "aws_appautoscaling_policy" "scale_in" {
  name               = "${var.name}-idle-scale-in"
  policy_type        = "StepScaling"
  service_namespace  = aws_appautoscaling_target.worker.service_namespace
  resource_id        = aws_appautoscaling_target.worker.resource_id
  scalable_dimension = aws_appautoscaling_target.worker.scalable_dimension

  step_scaling_policy_configuration {
    adjustment_type         = "ChangeInCapacity"
    cooldown                = var.scale_in_cooldown
    metric_aggregation_type = "Maximum"

    step_adjustment {
      metric_interval_upper_bound = 0
      scaling_adjustment          = -1
    }
  }
}

resource "aws_cloudwatch_metric_alarm" "backlog" {
  alarm_name          = "${var.name}-jobs-backlog"
  alarm_description   = "Jobs are waiting in ${aws_sqs_queue.jobs.name}: add s3ferry worker tasks."
  namespace           = "AWS/SQS"
  metric_name         = "ApproximateNumberOfMessagesVisible"
  dimensions          = { QueueName = aws_sqs_queue.jobs.name }
  statistic           = "Maximum"
  period              = 60
  evaluation_periods  = 1
  comparison_operator = "GreaterThanThreshold"
  threshold           = 0.5
  treat_missing_data  = "notBreaching"
  alarm_actions       = [aws_appautoscaling_policy.scale_out.arn]
  tags                = local.tags
}

resource "aws_cloudwatch_metric_alarm" "idle" {
  alarm_name          = "${var.name}-jobs-idle"
  alarm_description   = "No job has waited in ${aws_sqs_queue.jobs.name} for ${var.scale_in_idle_minutes} minutes: remove an s3ferry worker task."
  namespace           = "AWS/SQS"
  metric_name         = "ApproximateNumberOfMessagesVisible"
  dimensions          = { QueueName = aws_sqs_queue.jobs.name }
  statistic           = "Maximum"
  period              = 60
  evaluation_periods  = var.scale_in_idle_minutes
  comparison_operator = "LessThanThreshold"
  threshold           = 0.5
  treat_missing_data  = "breaching"
  alarm_actions       = [aws_appautoscaling_policy.scale_in.arn]
  tags                = local.tags
}
