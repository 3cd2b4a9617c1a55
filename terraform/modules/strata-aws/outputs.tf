output "bucket_name" {
  description = "Name of the bucket."
  value       = aws_s3_bucket.this.id
}

output "bucket_arn" {
  description = "ARN of the bucket."
  value       = aws_s3_bucket.this.arn
}

output "bucket_region" {
  description = "Region of the bucket (the chart's objectStore.region, the broker's --s3-region)."
  value       = aws_s3_bucket.this.region
}

output "prefix" {
  description = "Key prefix the policy grants access under."
  value       = var.prefix
}

output "object_store_url" {
  description = "The broker's --object-store (STRATA_OBJECT_STORE): s3://<bucket>/<prefix>."
  value       = "s3://${aws_s3_bucket.this.id}/${var.prefix}"
}

output "policy_arn" {
  description = "ARN of the IAM policy with the S3 permissions the broker needs."
  value       = aws_iam_policy.strata.arn
}

output "policy_json" {
  description = "The IAM policy document, e.g. to attach inline elsewhere."
  value       = data.aws_iam_policy_document.strata.json
}

output "role_arn" {
  description = "ARN of the IRSA role (null when create_irsa_role is false): the chart's objectStore.irsaRoleArn."
  value       = try(aws_iam_role.strata[0].arn, null)
}

output "role_name" {
  description = "Name of the IRSA role (null when create_irsa_role is false)."
  value       = try(aws_iam_role.strata[0].name, null)
}

output "service_account_annotations" {
  description = "Annotations for the pods' service account ({\"eks.amazonaws.com/role-arn\" = <role>}), empty without the role."
  value       = var.create_irsa_role ? { "eks.amazonaws.com/role-arn" = aws_iam_role.strata[0].arn } : {}
}
