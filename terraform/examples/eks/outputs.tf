output "bucket_name" {
  description = "The bucket Strata tiers sealed segments to."
  value       = module.strata_aws.bucket_name
}

output "object_store_url" {
  description = "The brokers' --object-store: s3://<bucket>/<prefix>."
  value       = module.strata_aws.object_store_url
}

output "iam_role_arn" {
  description = "The IRSA role the pods assume (the service account's eks.amazonaws.com/role-arn)."
  value       = module.strata_aws.role_arn
}

output "iam_policy_arn" {
  description = "The IAM policy with the broker's S3 permissions."
  value       = module.strata_aws.policy_arn
}

output "namespace" {
  description = "Namespace of the release."
  value       = helm_release.strata.namespace
}

output "release_name" {
  description = "Name of the Helm release."
  value       = helm_release.strata.name
}

output "bootstrap_servers" {
  description = "Kafka bootstrap address for clients inside the cluster (the chart's bootstrap Service, named as the chart's strata.fullname helper names it when nameOverride and fullnameOverride are not set)."
  value = format(
    "%s.%s.svc.cluster.local:9092",
    strcontains(var.release_name, "strata") ? var.release_name : "${var.release_name}-strata",
    var.namespace,
  )
}
