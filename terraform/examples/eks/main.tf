# Strata on an existing EKS cluster: the bucket, policy and IRSA role from the
# strata-aws module, and the Helm chart of this repository installed with them.

provider "aws" {
  region = var.region
}

data "aws_eks_cluster" "this" {
  name = var.cluster_name
}

# The cluster's IAM OIDC provider, found by its issuer URL.
data "aws_iam_openid_connect_provider" "this" {
  url = data.aws_eks_cluster.this.identity[0].oidc[0].issuer
}

module "strata_aws" {
  source = "../../modules/strata-aws"

  bucket_name          = var.bucket_name
  prefix               = var.prefix
  force_destroy        = var.force_destroy_bucket
  oidc_provider_arn    = data.aws_iam_openid_connect_provider.this.arn
  oidc_provider_url    = data.aws_eks_cluster.this.identity[0].oidc[0].issuer
  namespace            = var.namespace
  service_account_name = var.service_account_name
  tags                 = var.tags
}

# Helm talks to the cluster with a token from `aws eks get-token` (the AWS CLI must be
# installed where Terraform runs), so it never expires during a long apply.
provider "helm" {
  kubernetes = {
    host                   = data.aws_eks_cluster.this.endpoint
    cluster_ca_certificate = base64decode(data.aws_eks_cluster.this.certificate_authority[0].data)
    exec = {
      api_version = "client.authentication.k8s.io/v1beta1"
      command     = "aws"
      args        = ["eks", "get-token", "--cluster-name", var.cluster_name, "--region", var.region]
    }
  }
}

locals {
  chart_path = coalesce(var.chart_path, "${path.module}/../../../helm/strata")

  # The chart's values that tie it to what the module created (helm/strata/values.yaml
  # documents each): the bucket and prefix, the IRSA role on the service account, and no
  # in-chart MinIO.
  strata_values = {
    objectStore = {
      bucket      = module.strata_aws.bucket_name
      prefix      = module.strata_aws.prefix
      region      = module.strata_aws.bucket_region
      endpoint    = ""
      pathStyle   = false
      irsaRoleArn = module.strata_aws.role_arn
    }
    serviceAccount = {
      create = true
      name   = var.service_account_name
    }
    minio = {
      enabled = false
    }
  }
  image_values = var.image_tag == null ? {} : { image = { tag = var.image_tag } }
}

resource "helm_release" "strata" {
  name             = var.release_name
  namespace        = var.namespace
  create_namespace = true
  chart            = local.chart_path

  values = concat(
    [yamlencode(local.strata_values), yamlencode(local.image_values)],
    var.values,
  )

  # The StatefulSet rolls one pod at a time, each waiting for controlled shutdown and
  # readiness; give a 3-node install or upgrade time to finish.
  wait    = true
  timeout = 900

  # The role must be able to reach the bucket before the first broker starts (the
  # broker checks that it can write, read and delete there at start-up).
  depends_on = [module.strata_aws]
}
