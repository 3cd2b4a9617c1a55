# Object storage and IAM for Strata on AWS: the bucket its brokers tier sealed segments
# to, a policy granting exactly the S3 requests the broker makes under its prefix, and
# an IAM role the chart's service account assumes through IRSA.

locals {
  role_name   = coalesce(var.role_name, "${var.bucket_name}-strata")
  policy_name = coalesce(var.policy_name, "${var.bucket_name}-strata")

  bucket_arn  = aws_s3_bucket.this.arn
  objects_arn = "${aws_s3_bucket.this.arn}/${var.prefix}/*"

  # The OIDC issuer without its scheme, as IAM condition keys name it
  # (oidc.eks.<region>.amazonaws.com/id/<id>).
  oidc_issuer = (
    var.oidc_provider_url != null
    ? trimprefix(var.oidc_provider_url, "https://")
    : try(split("oidc-provider/", var.oidc_provider_arn)[1], "")
  )
}

# --- Bucket -------------------------------------------------------------------------------

resource "aws_s3_bucket" "this" {
  #checkov:skip=CKV_AWS_18:Access logging needs a second, log-target bucket that this module does not own; turn on server access logging or CloudTrail data events for the bucket where your account keeps them.
  #checkov:skip=CKV_AWS_144:Cross-region replication is a disaster-recovery choice with its own bucket, role and cost; Strata needs one bucket.
  #checkov:skip=CKV2_AWS_62:Strata does not consume S3 event notifications; nothing to notify.
  #checkov:skip=CKV_AWS_21:Versioning is off by default on purpose (see var.versioning_enabled): segments are never overwritten and deletions are deliberate, so versions would only retain deleted data.
  #checkov:skip=CKV_AWS_145:SSE-S3 is the default so that the broker needs no KMS permissions; pass kms_key_arn for SSE-KMS.
  bucket        = var.bucket_name
  force_destroy = var.force_destroy
  tags          = var.tags
}

resource "aws_s3_bucket_public_access_block" "this" {
  bucket                  = aws_s3_bucket.this.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

# ACLs off: the bucket owner owns every object, access is by IAM policy only.
resource "aws_s3_bucket_ownership_controls" "this" {
  bucket = aws_s3_bucket.this.id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "this" {
  bucket = aws_s3_bucket.this.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = var.kms_key_arn == null ? "AES256" : "aws:kms"
      kms_master_key_id = var.kms_key_arn
    }
    # With SSE-KMS, one data key per bucket instead of one KMS request per object.
    bucket_key_enabled = var.kms_key_arn != null
  }
}

resource "aws_s3_bucket_versioning" "this" {
  bucket = aws_s3_bucket.this.id
  versioning_configuration {
    # "Suspended" rather than "Disabled", so that switching versioning_enabled back to
    # false after it was true works (S3 cannot return a bucket to "never versioned").
    status = var.versioning_enabled ? "Enabled" : "Suspended"
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "this" {
  bucket = aws_s3_bucket.this.id

  rule {
    id     = "abort-incomplete-multipart-uploads"
    status = "Enabled"
    filter {}
    abort_incomplete_multipart_upload {
      days_after_initiation = var.abort_incomplete_multipart_upload_days
    }
  }

  dynamic "rule" {
    for_each = var.versioning_enabled ? [1] : []
    content {
      id     = "expire-noncurrent-versions"
      status = "Enabled"
      filter {}
      noncurrent_version_expiration {
        noncurrent_days = var.noncurrent_version_expiration_days
      }
      expiration {
        expired_object_delete_marker = true
      }
    }
  }

  depends_on = [aws_s3_bucket_versioning.this]
}

# TLS only: requests over plain http are refused whatever the caller's permissions.
data "aws_iam_policy_document" "bucket" {
  statement {
    sid     = "DenyInsecureTransport"
    effect  = "Deny"
    actions = ["s3:*"]
    resources = [
      local.bucket_arn,
      "${local.bucket_arn}/*",
    ]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_s3_bucket_policy" "this" {
  bucket = aws_s3_bucket.this.id
  policy = data.aws_iam_policy_document.bucket.json

  depends_on = [aws_s3_bucket_public_access_block.this]
}

# --- What the broker may do -----------------------------------------------------------------
#
# Exactly the requests crates/strata-tier/src/store.rs makes through the object_store
# crate (tests/python/test_deploy_terraform.py keeps this list and that code in step):
#   put (segment index, small segments, start-up probe, cluster id) -> PutObject
#   put_multipart / upload_part / complete (large segments)          -> s3:PutObject
#   abort of a failed multipart upload                                -> s3:AbortMultipartUpload
#   get, get_range (remote reads, cache fills), head (health probe)   -> s3:GetObject
#   delete (retention, garbage collection, probe)                     -> s3:DeleteObject
#   list (garbage collection, topic deletion)                         -> s3:ListBucket
#
# s3:ListBucket is granted on the bucket without an s3:prefix condition: S3 answers a
# GET or HEAD of a missing key with 404 only to a caller that may list the bucket, and
# the broker relies on that 404 (its first start looks for <prefix>/_strata/cluster-id;
# the health probe HEADs <prefix>/_strata/health); a GET carries no s3:prefix for such
# a condition to match. Listing reveals key names only: objects stay readable and
# writable under <prefix>/ alone.

data "aws_iam_policy_document" "strata" {
  statement {
    sid    = "StrataObjects"
    effect = "Allow"
    actions = [
      "s3:AbortMultipartUpload",
      "s3:DeleteObject",
      "s3:GetObject",
      "s3:PutObject",
    ]
    resources = [local.objects_arn]
  }

  statement {
    sid       = "StrataList"
    effect    = "Allow"
    actions   = ["s3:ListBucket"]
    resources = [local.bucket_arn]
  }

  dynamic "statement" {
    for_each = var.kms_key_arn == null ? [] : [var.kms_key_arn]
    content {
      sid       = "StrataKms"
      effect    = "Allow"
      actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
      resources = [statement.value]
    }
  }
}

resource "aws_iam_policy" "strata" {
  name        = local.policy_name
  path        = var.iam_path
  description = "Strata brokers: objects under s3://${var.bucket_name}/${var.prefix}/"
  policy      = data.aws_iam_policy_document.strata.json
  tags        = var.tags
}

# --- IRSA: the role the chart's service account assumes ---------------------------------------

data "aws_iam_policy_document" "assume" {
  count = var.create_irsa_role ? 1 : 0

  statement {
    sid     = "StrataServiceAccount"
    effect  = "Allow"
    actions = ["sts:AssumeRoleWithWebIdentity"]
    principals {
      type        = "Federated"
      identifiers = [var.oidc_provider_arn]
    }
    condition {
      test     = "StringEquals"
      variable = "${local.oidc_issuer}:sub"
      values   = ["system:serviceaccount:${var.namespace}:${var.service_account_name}"]
    }
    condition {
      test     = "StringEquals"
      variable = "${local.oidc_issuer}:aud"
      values   = ["sts.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "strata" {
  count = var.create_irsa_role ? 1 : 0

  name                 = local.role_name
  path                 = var.iam_path
  description          = "Strata brokers in ${var.namespace}/${var.service_account_name} (IRSA)"
  assume_role_policy   = data.aws_iam_policy_document.assume[0].json
  permissions_boundary = var.permissions_boundary_arn
  tags                 = var.tags

  lifecycle {
    precondition {
      condition     = var.oidc_provider_arn != null
      error_message = "create_irsa_role needs oidc_provider_arn (the EKS cluster's IAM OIDC provider)."
    }
  }
}

resource "aws_iam_role_policy_attachment" "strata" {
  count = var.create_irsa_role ? 1 : 0

  role       = aws_iam_role.strata[0].name
  policy_arn = aws_iam_policy.strata.arn
}
