# ---------------------------------------------------------------------------------------
# Naming and placement
# ---------------------------------------------------------------------------------------

variable "name" {
  description = "Prefix for every resource name (queues, roles, log group, service)."
  type        = string
  default     = "s3ferry"

  validation {
    condition     = can(regex("^[a-zA-Z0-9-]{1,40}$", var.name))
    error_message = "name must be 1-40 letters, digits or hyphens."
  }
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = {}
}

variable "vpc_id" {
  description = "VPC of the ECS service's tasks."
  type        = string
}

variable "subnet_ids" {
  description = "Private subnets for the tasks (they need a route to S3, SQS, ECR and Secrets Manager: NAT or VPC endpoints)."
  type        = list(string)
}

variable "assign_public_ip" {
  description = "Give tasks a public IP (only for public subnets without NAT)."
  type        = bool
  default     = false
}

variable "metrics_ingress_cidr_blocks" {
  description = "CIDR blocks allowed to scrape Prometheus metrics on the container port (empty: no ingress)."
  type        = list(string)
  default     = []
}

# ---------------------------------------------------------------------------------------
# Queues
# ---------------------------------------------------------------------------------------

variable "visibility_timeout_seconds" {
  description = "Job queue visibility timeout: the lease a worker extends by heartbeat while a copy runs (S3FERRY_WORKER__VISIBILITY_TIMEOUT)."
  type        = number
  default     = 60

  validation {
    condition     = var.visibility_timeout_seconds >= 10 && var.visibility_timeout_seconds <= 43200
    error_message = "visibility_timeout_seconds must be 10..43200."
  }
}

variable "message_retention_seconds" {
  description = "How long a job waits in the job queue before SQS drops it."
  type        = number
  default     = 345600 # 4 days
}

variable "max_receive_count" {
  description = "Receives before a job moves to the dead-letter queue."
  type        = number
  default     = 5

  validation {
    condition     = var.max_receive_count >= 1 && var.max_receive_count <= 1000
    error_message = "max_receive_count must be 1..1000."
  }
}

variable "sqs_kms_key_arn" {
  description = "Customer managed KMS key for queue encryption; null uses SSE-SQS (SQS-owned keys)."
  type        = string
  default     = null
}

variable "create_events_queue" {
  description = "Create a queue (with its own DLQ) that receives S3 event notifications for `s3ferry events`."
  type        = bool
  default     = false
}

variable "events_source_bucket_arns" {
  description = "Buckets allowed to send S3 event notifications to the events queue."
  type        = list(string)
  default     = []
}

variable "events_source_account_ids" {
  description = "Accounts owning those buckets (aws:SourceAccount); guards against a deleted and re-created bucket name in another account."
  type        = list(string)
  default     = []
}

# ---------------------------------------------------------------------------------------
# Data access (task role)
# ---------------------------------------------------------------------------------------

variable "source_bucket_arns" {
  description = "Buckets the workers read from in this partition (arn:aws:s3:::name). Read-only access."
  type        = list(string)
  default     = []
}

variable "destination_bucket_arns" {
  description = "Buckets the workers write to in this partition. Buckets in another partition are reached with keys from partition_credentials instead."
  type        = list(string)
  default     = []
}

variable "kms_key_arns" {
  description = "KMS keys of SSE-KMS objects the workers read or write (kms:Decrypt, kms:GenerateDataKey)."
  type        = list(string)
  default     = []
}

variable "partition_credentials" {
  description = <<-EOT
    Keys for endpoints the task role cannot reach (AWS China, another cloud). Each entry names a
    Secrets Manager secret holding JSON {"AWS_ACCESS_KEY_ID": "...", "AWS_SECRET_ACCESS_KEY": "..."}
    and the prefix the TOML endpoint reads them with (credentials = { kind = "env", prefix = "CHINA_" }).
    ECS injects them as container secrets; they never appear in the task definition.
  EOT
  type = list(object({
    env_prefix = string
    secret_arn = string
  }))
  default = []

  validation {
    condition     = alltrue([for c in var.partition_credentials : can(regex("^[A-Z][A-Z0-9_]*_$", c.env_prefix))])
    error_message = "env_prefix must be upper case and end with an underscore, e.g. CHINA_."
  }
}

variable "secrets_kms_key_arns" {
  description = "Customer managed KMS keys encrypting the partition_credentials secrets (empty: the AWS managed key)."
  type        = list(string)
  default     = []
}

# ---------------------------------------------------------------------------------------
# ECS service
# ---------------------------------------------------------------------------------------

variable "create_cluster" {
  description = "Create an ECS cluster; otherwise run in cluster_name."
  type        = bool
  default     = true
}

variable "cluster_name" {
  description = "Existing ECS cluster to run in when create_cluster is false."
  type        = string
  default     = null
}

variable "image" {
  description = "Container image (repository:tag or @digest) built from docker/Dockerfile."
  type        = string
}

variable "task_cpu" {
  description = "Fargate task CPU units."
  type        = number
  default     = 1024
}

variable "task_memory" {
  description = "Fargate task memory (MiB). The worker needs about part_size x max_parts + 150 MiB."
  type        = number
  default     = 2048
}

variable "cpu_architecture" {
  description = "X86_64 or ARM64 (the image must be built for it)."
  type        = string
  default     = "X86_64"
}

variable "fargate_spot_weight" {
  description = "Weight of FARGATE_SPOT against FARGATE (weight 1). 0 runs on FARGATE only. Workers drain on the two-minute Spot warning like on any stop. An existing cluster must have both capacity providers."
  type        = number
  default     = 0
}

variable "endpoints_toml" {
  description = "The endpoints TOML (S3FERRY_CONFIG), kept in an SSM parameter and written to /etc/s3ferry/s3ferry.toml at task start. No keys: use credentials = { kind = \"env\", ... }."
  type        = string
}

variable "queue_endpoint" {
  description = "Name of the endpoint in the TOML that serves SQS (S3FERRY_QUEUE_ENDPOINT)."
  type        = string
  default     = "queue"
}

variable "metrics_port" {
  description = "Prometheus /metrics port (S3FERRY_METRICS_PORT)."
  type        = number
  default     = 9400
}

variable "log_level" {
  description = "S3FERRY_LOG_LEVEL."
  type        = string
  default     = "info"
}

variable "log_retention_days" {
  description = "CloudWatch log retention."
  type        = number
  default     = 30
}

variable "log_kms_key_arn" {
  description = "KMS key for the log group (null: CloudWatch's default encryption). The key policy must allow logs.<region>.amazonaws.com."
  type        = string
  default     = null
}

variable "worker_max_jobs" {
  description = "S3FERRY_WORKER__MAX_JOBS: jobs in flight per task."
  type        = number
  default     = 8
}

variable "worker_max_parts" {
  description = "S3FERRY_WORKER__MAX_PARTS: parts in flight per task."
  type        = number
  default     = 16
}

variable "worker_part_size" {
  description = "S3FERRY_WORKER__PART_SIZE in bytes (>= 5 MiB)."
  type        = number
  default     = 8388608

  validation {
    condition     = var.worker_part_size >= 5242880
    error_message = "worker_part_size must be at least 5 MiB (S3's minimum part size)."
  }
}

variable "worker_server_copy_budget" {
  description = "S3FERRY_WORKER__SERVER_COPY_BUDGET in bytes: server-side copies one task has the store make at once (0: no bound, right for AWS S3)."
  type        = number
  default     = 0

  validation {
    condition     = var.worker_server_copy_budget == 0 || var.worker_server_copy_budget >= 1048576
    error_message = "worker_server_copy_budget is 0 (no bound) or at least 1 MiB."
  }
}

variable "drain_seconds" {
  description = "S3FERRY_WORKER__DRAIN_SECONDS: on SIGTERM the worker finishes or releases in-flight messages within this, then exits 0. Must be below stop_timeout."
  type        = number
  default     = 25
}

variable "stop_timeout" {
  description = "Seconds ECS waits after SIGTERM before SIGKILL (Fargate maximum: 120)."
  type        = number
  default     = 120

  validation {
    condition     = var.stop_timeout >= 2 && var.stop_timeout <= 120
    error_message = "stop_timeout must be 2..120 seconds (the Fargate maximum is 120)."
  }
}

variable "extra_environment" {
  description = "More plain environment variables for the container (never keys: use partition_credentials)."
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for k in keys(var.extra_environment) : !can(regex("(?i)(secret|access_key|session_token|password)", k))])
    error_message = "extra_environment is plain text in the task definition: pass keys through partition_credentials (Secrets Manager)."
  }
}

# ---------------------------------------------------------------------------------------
# Scaling on queue depth
# ---------------------------------------------------------------------------------------

variable "min_capacity" {
  description = "Fewest worker tasks (0 allowed: the scale-out alarm starts the first task)."
  type        = number
  default     = 1
}

variable "max_capacity" {
  description = "Most worker tasks."
  type        = number
  default     = 20
}

variable "backlog_per_task" {
  description = "Waiting messages one more task is worth; sizes the scale-out steps. About worker_max_jobs."
  type        = number
  default     = 8
}

variable "scale_in_idle_minutes" {
  description = "Minutes with no waiting message before one task is removed (repeated every scale_in_cooldown while the queue stays drained)."
  type        = number
  default     = 10
}

variable "scale_out_cooldown" {
  description = "Seconds between scale-out steps."
  type        = number
  default     = 60
}

variable "scale_in_cooldown" {
  description = "Seconds between scale-in steps."
  type        = number
  default     = 300
}

# ---------------------------------------------------------------------------------------
# Optional: the intake service (`s3ferry serve`), backfills on request
# ---------------------------------------------------------------------------------------

variable "intake_enabled" {
  description = "Run `s3ferry serve` as a one-task service: POST /v1/backfills starts a backfill of the routes in endpoints_toml."
  type        = bool
  default     = false
}

variable "intake_token_secret_arn" {
  description = "Secrets Manager secret whose value is the intake's bearer token (16+ characters). Required when intake_enabled."
  type        = string
  default     = null
}

variable "intake_port" {
  description = "Port of the intake API (plain HTTP: reach it through a TLS-terminating load balancer or from inside the VPC)."
  type        = number
  default     = 9410
}

variable "intake_ingress_cidr_blocks" {
  description = "CIDR blocks allowed to call the intake API (empty: no ingress)."
  type        = list(string)
  default     = []
}

variable "intake_namespace_id" {
  description = "Cloud Map private DNS namespace id: when set, the intake task registers as intake.<namespace> (an A record), so callers find it across restarts."
  type        = string
  default     = null
}
