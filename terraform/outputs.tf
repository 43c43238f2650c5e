output "job_queue_url" {
  description = "S3FERRY_QUEUE_URL: where the dispatcher and backfill send jobs."
  value       = aws_sqs_queue.jobs.url
}

output "job_queue_arn" {
  value = aws_sqs_queue.jobs.arn
}

output "dlq_url" {
  description = "S3FERRY_DLQ_URL: failed jobs, kept 14 days."
  value       = aws_sqs_queue.jobs_dlq.url
}

output "dlq_arn" {
  value = aws_sqs_queue.jobs_dlq.arn
}

output "events_queue_url" {
  description = "Queue receiving S3 event notifications (null unless create_events_queue)."
  value       = var.create_events_queue ? aws_sqs_queue.events[0].url : null
}

output "events_queue_arn" {
  description = "Use as the queue ARN in the source buckets' notification configuration."
  value       = var.create_events_queue ? aws_sqs_queue.events[0].arn : null
}

output "task_role_arn" {
  description = "Role the s3ferry code runs with; grant it in bucket and key policies of other accounts."
  value       = aws_iam_role.task.arn
}

output "execution_role_arn" {
  value = aws_iam_role.execution.arn
}

output "cluster_name" {
  value = local.cluster_name
}

output "service_name" {
  value = aws_ecs_service.worker.name
}

output "task_definition_arn" {
  value = aws_ecs_task_definition.worker.arn
}

output "log_group_name" {
  value = aws_cloudwatch_log_group.this.name
}

output "security_group_id" {
  value = aws_security_group.worker.id
}

output "config_parameter_name" {
  description = "SSM parameter holding the endpoints TOML; a change takes effect when tasks restart."
  value       = aws_ssm_parameter.config.name
}

output "intake_service_name" {
  description = "The intake ECS service (null unless intake_enabled)."
  value       = var.intake_enabled ? aws_ecs_service.intake[0].name : null
}

output "intake_security_group_id" {
  description = "Security group of the intake task: allow your callers (or load balancer) in on intake_port."
  value       = var.intake_enabled ? aws_security_group.intake[0].id : null
}
