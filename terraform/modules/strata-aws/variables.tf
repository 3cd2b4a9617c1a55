variable "bucket_name" {
  description = "Name of the S3 bucket created for Strata's sealed segments (globally unique)."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.bucket_name))
    error_message = "bucket_name must be a valid S3 bucket name: 3-63 lower-case letters, digits, dots and hyphens."
  }
}

variable "prefix" {
  description = "Key prefix Strata writes under (the path of --object-store s3://<bucket>/<prefix>). The IAM policy grants object access under this prefix only."
  type        = string
  default     = "strata"

  validation {
    condition     = can(regex("^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$", var.prefix))
    error_message = "prefix must be non-empty, of letters, digits, '.', '_', '-' and '/' between them (no leading or trailing slash), e.g. \"strata\" or \"prod/kafka\"."
  }
}

variable "force_destroy" {
  description = "Allow `terraform destroy` to delete the bucket while it still holds objects (all of Strata's tiered data). Keep false in production."
  type        = bool
  default     = false
}

variable "kms_key_arn" {
  description = "ARN of a KMS key for SSE-KMS default encryption. null: SSE-S3 (AES-256, keys managed by S3). With a key, the policy also grants kms:GenerateDataKey and kms:Decrypt on it."
  type        = string
  default     = null
}

variable "versioning_enabled" {
  description = "Turn on bucket versioning. Off by default: Strata never overwrites a segment (each upload has its own key) and deletes objects on purpose (retention, garbage collection), so old versions would only keep deleted data and cost storage. When on, noncurrent versions expire after noncurrent_version_expiration_days."
  type        = bool
  default     = false
}

variable "noncurrent_version_expiration_days" {
  description = "With versioning on: days after which noncurrent (deleted or overwritten) object versions are removed."
  type        = number
  default     = 7

  validation {
    condition     = var.noncurrent_version_expiration_days >= 1
    error_message = "noncurrent_version_expiration_days must be at least 1."
  }
}

variable "abort_incomplete_multipart_upload_days" {
  description = "Days after which parts of an unfinished multipart upload are removed. Strata aborts its failed uploads itself; this catches those of a broker that crashed mid-upload (their parts are invisible to listings, so Strata's own garbage collector cannot see them)."
  type        = number
  default     = 1

  validation {
    condition     = var.abort_incomplete_multipart_upload_days >= 1
    error_message = "abort_incomplete_multipart_upload_days must be at least 1."
  }
}

variable "create_irsa_role" {
  description = "Create the IAM role for service accounts (IRSA) that the chart's pods assume. false: only the bucket and the policy are created (attach the policy to your own role or user)."
  type        = bool
  default     = true
}

variable "oidc_provider_arn" {
  description = "ARN of the EKS cluster's IAM OIDC provider (arn:aws:iam::<account>:oidc-provider/oidc.eks.<region>.amazonaws.com/id/<id>). Required when create_irsa_role is true."
  type        = string
  default     = null

  validation {
    condition     = var.oidc_provider_arn == null || can(regex("^arn:[^:]+:iam::[0-9]{12}:oidc-provider/.+$", var.oidc_provider_arn))
    error_message = "oidc_provider_arn must look like arn:aws:iam::123456789012:oidc-provider/oidc.eks.eu-west-1.amazonaws.com/id/EXAMPLE."
  }
}

variable "oidc_provider_url" {
  description = "Issuer URL of the cluster's OIDC provider (https://oidc.eks.<region>.amazonaws.com/id/<id>, as aws_eks_cluster's identity[0].oidc[0].issuer gives it). null: taken from oidc_provider_arn."
  type        = string
  default     = null
}

variable "namespace" {
  description = "Kubernetes namespace of the Helm release; the role trusts only the service account in it."
  type        = string
  default     = "strata"
}

variable "service_account_name" {
  description = "Name of the Kubernetes service account the chart's pods run as (the chart's serviceAccount.name)."
  type        = string
  default     = "strata"
}

variable "role_name" {
  description = "Name of the IRSA role. null: \"<bucket_name>-strata\"."
  type        = string
  default     = null
}

variable "policy_name" {
  description = "Name of the IAM policy. null: \"<bucket_name>-strata\"."
  type        = string
  default     = null
}

variable "iam_path" {
  description = "Path of the IAM role and policy."
  type        = string
  default     = "/"
}

variable "permissions_boundary_arn" {
  description = "ARN of a permissions boundary for the role, if your account requires one."
  type        = string
  default     = null
}

variable "tags" {
  description = "Tags for every resource the module creates."
  type        = map(string)
  default     = {}
}
