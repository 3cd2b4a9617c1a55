"""Terraform for AWS (terraform/): formatting, checkov, and the IAM policy of the
strata-aws module checked against the S3 requests the broker really makes.

No provider can be downloaded here, so nothing is planned: `terraform fmt -check`
parses every file, checkov scans the configuration (every skipped check must carry its
reason), and python-hcl2 reads the module so the test can compare its policy with
S3_ACTIONS_BY_CALL below, which in turn is compared with the object_store calls in
crates/strata-tier/src/store.rs: a new call there fails this test until the mapping
(and so the policy) is updated. The EKS example is checked against the chart: the values
it gives helm_release exist in helm/strata/values.yaml, and `helm template` with them
renders pods that use the IRSA role, the module's bucket and prefix, and no MinIO.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import hcl2
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
TF = REPO / "terraform"
MODULE = TF / "modules" / "strata-aws"
EXAMPLE = TF / "examples" / "eks"
CHECKOV = REPO / ".tools" / "checkov" / "bin" / "checkov"
STORE_RS = REPO / "crates" / "strata-tier" / "src" / "store.rs"

# What each object_store call the broker makes is on the wire, and the IAM action S3
# authorizes it with. Every call goes through strata_tier::Store
# (crates/strata-tier/src/store.rs); nothing else in the workspace talks to the store:
#
#   Store::put -> ObjectStore::put (store.rs, `self.inner.put`): PutObject. Used for
#     segment indexes and small segments (strata-broker/src/tiering.rs), the start-up
#     probe (Store::check) and the cluster id (strata-broker/src/server.rs claim_store).
#   Store::put_file -> ObjectStore::put_multipart, MultipartUpload::put_part / complete
#     (store.rs): CreateMultipartUpload, UploadPart, CompleteMultipartUpload, all
#     authorized as s3:PutObject; MultipartUpload::abort after a failed part:
#     AbortMultipartUpload (s3:AbortMultipartUpload).
#   Store::get / get_range -> ObjectStore::get / get_range (store.rs; callers
#     strata-tier/src/cache.rs, claim_store, Store::check): GetObject (with Range).
#   Store::run_probe -> ObjectStore::head (store.rs): HeadObject, authorized as
#     s3:GetObject.
#   Store::delete -> ObjectStore::delete (store.rs; retention and garbage collection in
#     strata-broker/src/tiering.rs, Store::check): DeleteObject (one key per request,
#     not the multi-object DeleteObjects).
#   Store::list -> ObjectStore::list (store.rs; garbage collection and topic deletion in
#     tiering.rs): ListObjectsV2, authorized as s3:ListBucket on the bucket.
#
# Not used, so not granted: copy/rename (CopyObject), conditional puts (PutMode::Create
# or Update), list_with_delimiter, ListParts (s3:ListMultipartUploadParts),
# ListMultipartUploads (s3:ListBucketMultipartUploads), GetBucketLocation (the region is
# configured), object tagging, ACLs.
S3_ACTIONS_BY_CALL = {
    "put": {"s3:PutObject"},
    "put_multipart": {"s3:PutObject"},
    "put_part": {"s3:PutObject"},
    "complete": {"s3:PutObject"},
    "abort": {"s3:AbortMultipartUpload"},
    "get": {"s3:GetObject"},
    "get_range": {"s3:GetObject"},
    "head": {"s3:GetObject"},
    "delete": {"s3:DeleteObject"},
    "list": {"s3:ListBucket"},
}
BROKER_S3_ACTIONS = set().union(*S3_ACTIONS_BY_CALL.values())
# Actions on objects (resource: the objects under the prefix) versus on the bucket.
BUCKET_LEVEL_ACTIONS = {"s3:ListBucket"}


def unq(value):
    """python-hcl2 keeps the quotes of string literals ("\\"s3:GetObject\\""): drop them."""
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def load_dir(path: Path) -> dict[str, list]:
    """Every top-level block of the .tf files in `path`, merged by block type."""
    merged: dict[str, list] = {}
    for tf in sorted(path.glob("*.tf")):
        with tf.open() as f:
            parsed = hcl2.load(f)
        for kind, blocks in parsed.items():
            if not kind.startswith("__"):
                merged.setdefault(kind, []).extend(blocks)
    return merged


def named(blocks: list, *labels: str) -> dict:
    """The body of the block with these labels, e.g. named(data, "aws_iam_policy_document",
    "strata")."""
    for block in blocks:
        body = block
        for label in labels:
            body = next((v for k, v in body.items() if unq(k) == label), None)
            if body is None:
                break
        if body is not None:
            return body
    raise AssertionError(f"no block {' '.join(labels)}")


def locals_of(parsed: dict) -> dict:
    out: dict = {}
    for block in parsed.get("locals", []):
        out.update({k: v for k, v in block.items() if not k.startswith("__")})
    return out


@pytest.fixture(scope="module")
def module():
    return load_dir(MODULE)


# --- tools ------------------------------------------------------------------------------


def test_terraform_fmt():
    terraform = shutil.which("terraform")
    if terraform is None:
        pytest.fail("terraform is not installed (scripts/install-deploy-tools.sh)")
    r = subprocess.run(
        [terraform, "fmt", "-check", "-recursive", "-diff", str(TF)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, f"terraform fmt would change:\n{r.stdout}\n{r.stderr}"


def test_checkov_has_no_unexplained_failures():
    if not CHECKOV.exists():
        pytest.fail(f"{CHECKOV} is missing: run scripts/install-deploy-tools.sh")
    r = subprocess.run(
        [
            str(CHECKOV),
            "-d",
            str(TF),
            "--framework",
            "terraform",
            "--skip-download",
            "--output",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.stdout.strip(), f"checkov printed nothing (exit {r.returncode}):\n{r.stderr[-3000:]}"
    reports = json.loads(r.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    failed, skipped, parsing = [], [], 0
    for report in reports:
        parsing += report["summary"].get("parsing_errors", 0)
        failed += report["results"].get("failed_checks", [])
        skipped += report["results"].get("skipped_checks", [])
    assert parsing == 0, f"checkov could not parse {parsing} files"
    assert not failed, "checkov failed checks:\n" + "\n".join(
        f"{c['check_id']} {c['check_name']} ({c['resource']}, {c['file_path']})" for c in failed
    )
    unexplained = [
        c["check_id"]
        for c in skipped
        if len((c.get("check_result") or {}).get("suppress_comment") or "") < 20
    ]
    assert not unexplained, f"skipped without a reason: {unexplained}"
    # Every skip in the sources has the `#checkov:skip=CKV_...:reason` form.
    for tf in TF.rglob("*.tf"):
        for line in tf.read_text().splitlines():
            if "checkov:skip" in line:
                assert re.search(r"#checkov:skip=CKV2?_[A-Z0-9_]+:\S.{15,}", line), (
                    f"{tf.relative_to(REPO)}: skip without a reason: {line.strip()}"
                )


# --- the broker's S3 calls ----------------------------------------------------------------


def test_mapping_covers_every_object_store_call_of_the_broker():
    """The object_store calls in store.rs are exactly those S3_ACTIONS_BY_CALL maps, and
    no other crate calls object_store directly."""
    code = STORE_RS.read_text()
    calls = set(re.findall(r"\bself\.inner\.(\w+)\(", code))
    calls |= set(re.findall(r"\bupload\.(\w+)\(", code))
    assert calls == set(S3_ACTIONS_BY_CALL), (
        f"store.rs calls {sorted(calls)}; the mapping knows {sorted(S3_ACTIONS_BY_CALL)}: "
        "update S3_ACTIONS_BY_CALL and the module's IAM policy"
    )
    for rs in (REPO / "crates").rglob("*.rs"):
        if "strata-tier" in rs.parts:
            continue
        text = rs.read_text()
        direct = re.search(r"\bobject_store::|\bimpl\s+ObjectStore\b|\bdyn ObjectStore\b", text)
        assert not direct, (
            f"{rs.relative_to(REPO)} uses the object_store crate directly: map its calls too"
        )


def test_policy_grants_exactly_the_broker_s3_actions_on_its_prefix(module):
    policy = named(module["data"], "aws_iam_policy_document", "strata")
    statements = list(policy.get("statement", []))
    # A dynamic statement (the optional KMS grant) must not add S3 actions.
    for dyn in policy.get("dynamic", []):
        for content in named([dyn], "statement")["content"]:
            actions = {unq(a) for a in content["actions"]}
            assert not any(a.startswith("s3:") for a in actions), actions
            assert actions <= {"kms:Decrypt", "kms:GenerateDataKey"}, actions
    granted: set[str] = set()
    local = locals_of(module)
    bucket_arn = "${local.bucket_arn}"
    objects_arn = "${local.objects_arn}"
    assert unq(local["bucket_arn"]) == "${aws_s3_bucket.this.arn}"
    assert unq(local["objects_arn"]) == "${aws_s3_bucket.this.arn}/${var.prefix}/*"
    for st in statements:
        assert unq(st.get("effect", '"Allow"')) == "Allow", st
        assert "condition" not in st or st.get("sid") != '"StrataObjects"'
        actions = {unq(a) for a in st["actions"]}
        assert not any("*" in a for a in actions), f"wildcard action in {actions}"
        resources = [unq(r) for r in st["resources"]]
        if actions & BUCKET_LEVEL_ACTIONS:
            assert actions <= BUCKET_LEVEL_ACTIONS, f"object and bucket actions mixed: {actions}"
            assert resources == [bucket_arn], resources
        else:
            assert resources == [objects_arn], (
                f"{sorted(actions)} should apply to the objects under the prefix only: {resources}"
            )
        granted |= actions
    assert granted == BROKER_S3_ACTIONS, (
        f"granted {sorted(granted)}, the broker calls {sorted(BROKER_S3_ACTIONS)}"
    )
    attach = named(module["resource"], "aws_iam_policy", "strata")
    assert unq(attach["policy"]) == "${data.aws_iam_policy_document.strata.json}"


def test_prefix_variable_cannot_widen_the_grant(module):
    """The prefix is a plain key prefix: no wildcard, no leading or trailing slash (which
    would turn bucket/prefix/* into something else)."""
    var = named(module["variable"], "prefix")
    condition = unq(var["validation"][0]["condition"])
    pattern = re.search(r'regex\("(.+)", var\.prefix\)', condition)
    assert pattern, condition
    rx = re.compile(pattern.group(1).replace("\\\\", "\\"))
    for good in ("strata", "prod/kafka", "a.b_c-d"):
        assert rx.search(good), good
    for bad in ("", "*", "strata/", "/strata", "a/*", "a//b", "x?"):
        assert not rx.search(bad), bad


def test_bucket_is_private_encrypted_and_aborts_stale_uploads(module):
    res = module["resource"]
    pab = named(res, "aws_s3_bucket_public_access_block", "this")
    for key in ("block_public_acls", "block_public_policy", "ignore_public_acls",
                "restrict_public_buckets"):
        assert pab[key] is True, key
    sse = named(res, "aws_s3_bucket_server_side_encryption_configuration", "this")
    default = sse["rule"][0]["apply_server_side_encryption_by_default"][0]
    assert "AES256" in default["sse_algorithm"] and "aws:kms" in default["sse_algorithm"]
    lifecycle = named(res, "aws_s3_bucket_lifecycle_configuration", "this")
    rules = lifecycle["rule"]
    abort = [r for r in rules if "abort_incomplete_multipart_upload" in r]
    assert abort and unq(abort[0]["status"]) == "Enabled"
    days = abort[0]["abort_incomplete_multipart_upload"][0]["days_after_initiation"]
    assert days == "${var.abort_incomplete_multipart_upload_days}"
    versioning = named(res, "aws_s3_bucket_versioning", "this")
    assert "var.versioning_enabled" in versioning["versioning_configuration"][0]["status"]
    ownership = named(res, "aws_s3_bucket_ownership_controls", "this")
    assert unq(ownership["rule"][0]["object_ownership"]) == "BucketOwnerEnforced"


def test_irsa_role_trusts_only_the_chart_service_account(module):
    trust = named(module["data"], "aws_iam_policy_document", "assume")
    (st,) = trust["statement"]
    assert [unq(a) for a in st["actions"]] == ["sts:AssumeRoleWithWebIdentity"]
    (principal,) = st["principals"]
    assert unq(principal["type"]) == "Federated"
    assert principal["identifiers"] == ["${var.oidc_provider_arn}"]
    conditions = {unq(c["variable"]): c for c in st["condition"]}
    sub = conditions["${local.oidc_issuer}:sub"]
    assert unq(sub["test"]) == "StringEquals"
    assert [unq(v) for v in sub["values"]] == [
        "system:serviceaccount:${var.namespace}:${var.service_account_name}"
    ]
    aud = conditions["${local.oidc_issuer}:aud"]
    assert [unq(v) for v in aud["values"]] == ["sts.amazonaws.com"]
    role = named(module["resource"], "aws_iam_role", "strata")
    assert unq(role["assume_role_policy"]) == "${data.aws_iam_policy_document.assume[0].json}"
    attachment = named(module["resource"], "aws_iam_role_policy_attachment", "strata")
    assert unq(attachment["policy_arn"]) == "${aws_iam_policy.strata.arn}"


def test_versions_pin_providers():
    for d in (MODULE, EXAMPLE):
        parsed = load_dir(d)
        (tf,) = parsed["terraform"]
        assert "required_version" in tf
        providers = tf["required_providers"][0]
        assert "aws" in providers, d
        for name, spec in providers.items():
            if name.startswith("__"):
                continue
            assert unq(spec["source"]).startswith("hashicorp/"), (name, spec)
            assert "<" in unq(spec["version"]), f"{d.name}: {name} has no upper bound"


def _documented(readme: Path, names: list[str]) -> list[str]:
    text = readme.read_text()
    return [n for n in names if f"`{n}`" not in text]


@pytest.mark.parametrize("directory", [MODULE, EXAMPLE], ids=["module", "example"])
def test_readme_documents_every_input_and_output(directory):
    parsed = load_dir(directory)
    inputs = [unq(k) for block in parsed.get("variable", []) for k in block]
    outputs = [unq(k) for block in parsed.get("output", []) for k in block]
    assert inputs and outputs
    missing = _documented(directory / "README.md", inputs + outputs)
    assert not missing, f"{directory.relative_to(REPO)}/README.md does not document {missing}"


# --- the EKS example and the chart ---------------------------------------------------------


def _value_paths(tree, prefix=()):
    if isinstance(tree, dict):
        for k, v in tree.items():
            if k.startswith("__"):
                continue
            yield from _value_paths(v, (*prefix, k))
    else:
        yield prefix


def test_example_uses_the_module_and_the_chart_of_this_repository():
    parsed = load_dir(EXAMPLE)
    mod = named(parsed["module"], "strata_aws")
    assert (EXAMPLE / unq(mod["source"])).resolve() == MODULE.resolve()
    release = named(parsed["resource"], "helm_release", "strata")
    local = locals_of(parsed)
    assert unq(release["chart"]) == "${local.chart_path}"
    assert "${path.module}/../../../helm/strata" in local["chart_path"]
    chart = (EXAMPLE / "../../../helm/strata").resolve()
    assert chart == (REPO / "helm" / "strata").resolve()
    assert "local.strata_values" in json.dumps(release["values"])
    # Every value the example sets exists in the chart's values.yaml (unless the chart
    # is not there yet).
    values_yaml = chart / "values.yaml"
    if not values_yaml.exists():
        pytest.skip("helm/strata/values.yaml does not exist yet")
    defaults = yaml.safe_load(values_yaml.read_text())
    for path in _value_paths(local["strata_values"]):
        node = defaults
        for key in path:
            assert isinstance(node, dict) and key in node, (
                f"the example sets {'.'.join(path)}, which helm/strata/values.yaml lacks"
            )
            node = node[key]
    # The role's trust and the chart's service account name the same account.
    assert mod["service_account_name"] == "${var.service_account_name}"
    assert local["strata_values"]["serviceAccount"]["name"] == "${var.service_account_name}"
    assert mod["namespace"] == "${var.namespace}"
    assert unq(release["namespace"]) == "${var.namespace}"
    assert local["strata_values"]["objectStore"]["irsaRoleArn"] == "${module.strata_aws.role_arn}"


HELM = REPO / ".tools" / "helm4" / "helm"


def _resolve(tree, subst: dict[str, object]):
    """The example's HCL values with its references replaced by sample values."""
    if isinstance(tree, dict):
        return {k: _resolve(v, subst) for k, v in tree.items() if not k.startswith("__")}
    if isinstance(tree, str):
        value = unq(tree)
        if value in subst:
            return subst[value]
        assert "${" not in value, f"no sample value for {value}"
        return value
    return tree


def test_example_values_render_the_chart_for_irsa(tmp_path):
    """`helm template` with the values the example gives helm_release (its references to
    the module's outputs and its variables replaced by sample values): the pods run as
    the service account the role trusts, annotated with the role, on the module's bucket
    and prefix, with no static keys, no endpoint and no in-chart MinIO; and the bootstrap
    Service is the one the example's `bootstrap_servers` output names."""
    chart = REPO / "helm" / "strata"
    if not (chart / "Chart.yaml").exists():
        pytest.skip("helm/strata does not exist yet")
    if not HELM.exists():
        pytest.fail(f"{HELM} is missing: run scripts/install-deploy-tools.sh")
    parsed = load_dir(EXAMPLE)
    local = locals_of(parsed)
    sample = {
        "bucket": "acme-strata",
        "prefix": "strata",
        "region": "eu-west-1",
        "role": "arn:aws:iam::123456789012:role/acme-strata-strata",
        "sa": "strata",
        "namespace": "strata",
        "release": "strata",
    }
    values = _resolve(
        local["strata_values"],
        {
            "${module.strata_aws.bucket_name}": sample["bucket"],
            "${module.strata_aws.prefix}": sample["prefix"],
            "${module.strata_aws.bucket_region}": sample["region"],
            "${module.strata_aws.role_arn}": sample["role"],
            "${var.service_account_name}": sample["sa"],
        },
    )
    (tmp_path / "values.yaml").write_text(yaml.safe_dump(values))
    r = subprocess.run(
        [str(HELM), "template", sample["release"], str(chart), "--namespace",
         sample["namespace"], "-f", str(tmp_path / "values.yaml")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, f"helm template failed:\n{r.stderr}"
    docs = [d for d in yaml.safe_load_all(r.stdout) if d]
    accounts = [d for d in docs if d["kind"] == "ServiceAccount"]
    assert [a["metadata"]["name"] for a in accounts] == [sample["sa"]]
    annotations = accounts[0]["metadata"].get("annotations") or {}
    assert annotations.get("eks.amazonaws.com/role-arn") == sample["role"], annotations
    assert not [d for d in docs if "minio" in d["metadata"]["name"]], "in-chart MinIO rendered"
    sets = [d for d in docs if d["kind"] == "StatefulSet"]
    assert sets
    for sts in sets:
        pod = sts["spec"]["template"]["spec"]
        assert pod.get("serviceAccountName") == sample["sa"], sts["metadata"]["name"]
        containers = {c["name"]: c for c in pod["containers"]}
        strata = containers.get("strata", pod["containers"][0])
        env = {e["name"]: e.get("value") for e in strata.get("env", [])}
        assert env.get("STRATA_OBJECT_STORE") == f"s3://{sample['bucket']}/{sample['prefix']}"
        assert "STRATA_S3_ENDPOINT" not in env and "AWS_ACCESS_KEY_ID" not in env, env
        assert env.get("STRATA_S3_PATH_STYLE") in (None, "false"), env
    # The example's bootstrap_servers output names the chart's bootstrap Service.
    output = named(parsed["output"], "bootstrap_servers")["value"]
    assert '"%s.%s.svc.cluster.local:9092"' in output and "var.release_name" in output
    service = sample["release"] if "strata" in sample["release"] else f"{sample['release']}-strata"
    bootstrap = [d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == service]
    assert bootstrap, f"no Service {service}"
    assert 9092 in {p["port"] for p in bootstrap[0]["spec"]["ports"]}
