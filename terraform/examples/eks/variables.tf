variable "region" {
  description = "AWS region of the EKS cluster (and of the bucket this creates)."
  type        = string
}

variable "cluster_name" {
  description = "Name of the existing EKS cluster to install Strata into. It needs an IAM OIDC provider (IRSA), e.g. `eksctl utils associate-iam-oidc-provider --cluster <name> --approve`."
  type        = string
}

variable "bucket_name" {
  description = "Name of the S3 bucket to create for Strata (globally unique)."
  type        = string
}

variable "prefix" {
  description = "Key prefix in the bucket (objectStore.prefix)."
  type        = string
  default     = "strata"
}

variable "namespace" {
  description = "Kubernetes namespace of the release (created if missing)."
  type        = string
  default     = "strata"
}

variable "release_name" {
  description = "Helm release name. With \"strata\" (or any name containing it) the chart's resources are named after the release alone."
  type        = string
  default     = "strata"
}

variable "service_account_name" {
  description = "Service account the pods run as; the IRSA role trusts only this one (in namespace)."
  type        = string
  default     = "strata"
}

variable "chart_path" {
  description = "Path of the Strata chart. null: helm/strata of this repository (../../../helm/strata from this directory)."
  type        = string
  default     = null
}

variable "image_tag" {
  description = "Strata image tag. null: the chart's appVersion."
  type        = string
  default     = null
}

variable "force_destroy_bucket" {
  description = "Let `terraform destroy` delete the bucket with its objects (Strata's tiered data). For trials only."
  type        = bool
  default     = false
}

variable "values" {
  description = "More values files for the chart, as YAML strings, applied after the ones this example sets (e.g. replicas, persistence.size, resources, external access)."
  type        = list(string)
  default     = []
}

variable "tags" {
  description = "Tags for the AWS resources."
  type        = map(string)
  default     = {}
}
