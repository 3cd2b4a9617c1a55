"""The Helm chart helm/strata (issue 11), with Helm 3 and Helm 4.

* Every values file of tests/deploy/values (defaults, split roles, IRSA, static keys,
  S3-compatible endpoint, in-chart MinIO, emptyDir brokers, external access) passes
  `helm lint --strict` and renders; each rendering validates against the Kubernetes
  1.33 API schemas (kubernetes-validate --strict), has no duplicate keys (yamllint), and
  checkov finds nothing that is not skipped with a reason in a checkov.io/skipN
  annotation. Helm 3 and Helm 4 render the same objects.
* Each scenario renders what it promises (voters, node ids, storage, credentials,
  external Services, monitoring objects, NOTES).
* values.schema.json (and the templates' own checks) reject the bad-*.yaml values files
  with the message each file names in its `# expect:` lines.
* The rendered chart runs: every container of every StatefulSet pod (init containers
  included, with a stub kubectl answering the node's zone) is started as a local process
  with exactly the command, arguments and environment of its pod spec, each pod on its
  own loopback address with the pods' DNS names in a private /etc/hosts (localpods.py),
  the object store a local radosgw. The cluster forms, a client produces and consumes
  through the bootstrap Service's name, and so does the chart's `helm test` pod.

Tools come from scripts/install-deploy-tools.sh: .tools/helm3, .tools/helm4,
.tools/checkov, and kubernetes-validate and yamllint in the test virtualenv.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from localpods import LocalProcess, Sandbox, loopback_block

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "strata"
VALUES = REPO / "tests" / "deploy" / "values"
TOOLS = REPO / ".tools"
VENV_BIN = Path(sys.executable).parent
HELMS = {"helm3": TOOLS / "helm3" / "helm", "helm4": TOOLS / "helm4" / "helm"}
CHECKOV = TOOLS / "checkov" / "bin" / "checkov"
KUBE_VERSION = "1.33.0"
RELEASE = "strata"
NAMESPACE = "streaming"
DOMAIN = "cluster.local"
# Custom resources kubernetes-validate has no schema for; checked by hand below.
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}

MATRIX = sorted(p.stem for p in VALUES.glob("*.yaml") if not p.stem.startswith("bad-"))
BAD = sorted(p.stem for p in VALUES.glob("bad-*.yaml"))


def _tool(path: Path) -> Path:
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(f"{path} is missing: run scripts/install-deploy-tools.sh", pytrace=False)
    return path


# --- Helm ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def helm_env(tmp_path_factory) -> dict[str, str]:
    """Helm's cache, config and data in a temporary directory; no cluster."""
    home = tmp_path_factory.mktemp("helm-home")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HELM_")}
    env.update(
        HELM_CACHE_HOME=str(home / "cache"),
        HELM_CONFIG_HOME=str(home / "config"),
        HELM_DATA_HOME=str(home / "data"),
        KUBECONFIG=str(home / "no-kubeconfig"),
    )
    return env


def helm(which: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(_tool(HELMS[which])), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def values_args(name: str | None) -> list[str]:
    return ["-f", str(VALUES / f"{name}.yaml")] if name else []


def template(which: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return helm(
        which,
        env,
        "template",
        RELEASE,
        str(CHART),
        "--namespace",
        NAMESPACE,
        "--kube-version",
        KUBE_VERSION,
        *args,
    )


@dataclass
class Rendering:
    """One `helm template` output: its text, its objects, and one file per object."""

    name: str
    text: str
    docs: list[dict]
    dir: Path

    def all(self, kind: str) -> list[dict]:
        return [d for d in self.docs if d["kind"] == kind]

    def get(self, kind: str, name: str) -> dict:
        found = [d for d in self.all(kind) if d["metadata"]["name"] == name]
        assert found, f"{self.name}: no {kind} {name}; objects: {self.index()}"
        return found[0]

    def has(self, kind: str, name: str) -> bool:
        return any(d["metadata"]["name"] == name for d in self.all(kind))

    def index(self) -> list[str]:
        return [f"{d['kind']}/{d['metadata']['name']}" for d in self.docs]

    def strata_sets(self) -> list[dict]:
        """The Strata StatefulSets (not MinIO's)."""
        return [
            s
            for s in self.all("StatefulSet")
            if s["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/name") == "strata"
        ]


def parse(name: str, text: str, out: Path) -> Rendering:
    docs = [d for d in yaml.safe_load_all(text) if d]
    out.mkdir(parents=True, exist_ok=True)
    (out / "all.yaml").write_text(text)
    for i, d in enumerate(docs):
        f = out / f"{i:02d}-{d['kind']}-{d['metadata']['name']}.yaml"
        f.write_text(yaml.safe_dump(d, sort_keys=False))
    return Rendering(name, text, docs, out)


def render(which, env, out: Path, name: str | None, overrides: dict | None = None) -> Rendering:
    """Renders values file `name`, then `overrides` (nested values, written to a file)."""
    args = values_args(name)
    if overrides:
        out.mkdir(parents=True, exist_ok=True)
        (out / "overrides.yaml").write_text(yaml.safe_dump(overrides))
        args += ["-f", str(out / "overrides.yaml")]
    r = template(which, env, *args)
    assert r.returncode == 0, f"helm template ({which}, {name}) failed:\n{r.stderr}"
    return parse(f"{which}-{name}", r.stdout, out)


@pytest.fixture(scope="module")
def renderings(helm_env, tmp_path_factory) -> dict[str, Rendering]:
    """Every values file of the matrix rendered by both Helms: "helm4-split" -> Rendering."""
    root = tmp_path_factory.mktemp("renderings")
    out = {}
    for which in HELMS:
        for name in MATRIX:
            r = template(which, helm_env, *values_args(name))
            if r.returncode != 0:
                pytest.fail(f"helm template ({which}, {name}) failed:\n{r.stderr}", pytrace=False)
            out[f"{which}-{name}"] = parse(f"{which}-{name}", r.stdout, root / f"{which}-{name}")
    return out


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def strata_container(sts: dict) -> dict:
    return next(c for c in sts["spec"]["template"]["spec"]["containers"] if c["name"] == "strata")


# --- lint, schemas, checkov -----------------------------------------------------------------


@pytest.mark.parametrize("name", MATRIX)
@pytest.mark.parametrize("which", list(HELMS))
def test_lint_strict_and_template(which, name, helm_env, renderings):
    r = helm(
        which,
        helm_env,
        "lint",
        "--strict",
        str(CHART),
        "--namespace",
        NAMESPACE,
        "--kube-version",
        KUBE_VERSION,
        *values_args(name),
    )
    assert r.returncode == 0, f"helm lint --strict failed:\n{r.stdout}\n{r.stderr}"
    assert "0 chart(s) failed" in r.stdout
    rendering = renderings[f"{which}-{name}"]
    # Everything namespaced lands in the release's namespace (checkov's CKV_K8S_21 too).
    for d in rendering.docs:
        if d["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            assert d["metadata"].get("namespace") == NAMESPACE, d["metadata"]


@pytest.mark.parametrize("name", MATRIX)
@pytest.mark.parametrize("which", list(HELMS))
def test_rendering_validates_against_kubernetes_schemas(which, name, renderings):
    rendering = renderings[f"{which}-{name}"]
    files = sorted(str(p) for p in rendering.dir.glob("[0-9]*.yaml"))
    r = subprocess.run(
        [str(_tool(VENV_BIN / "kubernetes-validate")), "-k", KUBE_VERSION, "--strict", *files],
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = r.stdout + r.stderr
    assert r.returncode == 0, f"kubernetes-validate failed:\n{out}"
    for line in out.splitlines():
        if line.startswith("INFO") and " passed " in line:
            continue
        # Only the Prometheus operator's kinds may lack a schema.
        m = re.match(r"WARN \S+ Couldn't find schema for kind (\w+) with api version", line)
        assert m and m.group(1) in CRD_KINDS, f"unexpected kubernetes-validate output: {line}"
    # Objects the schemas cannot check: the Prometheus operator's custom resources.
    for sm in rendering.all("ServiceMonitor"):
        check_service_monitor(rendering, sm)
    for rule in rendering.all("PrometheusRule"):
        check_prometheus_rule(rule)


def check_service_monitor(rendering: Rendering, sm: dict) -> None:
    """The ServiceMonitor selects exactly the headless Service, by a port it has, with a
    job label whose value names strata (as the alert rules expect)."""
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    spec = sm["spec"]
    sel = spec["selector"]
    matching = []
    for svc in rendering.all("Service"):
        labels = svc["metadata"].get("labels", {})
        if all(labels.get(k) == v for k, v in sel["matchLabels"].items()) and all(
            e["operator"] == "Exists" and e["key"] in labels for e in sel["matchExpressions"]
        ):
            matching.append(svc)
    assert [s["metadata"]["name"] for s in matching] == [f"{RELEASE}-headless"]
    svc = matching[0]
    assert "strata" in svc["metadata"]["labels"][spec["jobLabel"]]
    ports = {p["name"] for p in svc["spec"]["ports"]}
    for ep in spec["endpoints"]:
        assert ep["port"] in ports and ep["path"] == "/metrics"
        assert re.fullmatch(r"\d+(ms|s|m|h)", ep["interval"])


def check_prometheus_rule(rule: dict) -> None:
    """spec.groups is the alerts file's `groups`, unchanged."""
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    source = yaml.safe_load((CHART / "files" / "prometheus" / "strata-alerts.yaml").read_text())
    assert rule["spec"] == {"groups": source["groups"]}
    for group in rule["spec"]["groups"]:
        assert group["name"] and group["rules"]
        for r in group["rules"]:
            assert ("alert" in r) != ("record" in r) and r["expr"], r


@pytest.fixture(scope="module")
def checkov_report(renderings) -> dict[str, dict]:
    """One checkov run over every rendering:
    "helm4-split" -> {"failed": [checks], "skipped": [checks]}."""
    root = next(iter(renderings.values())).dir.parent
    r = subprocess.run(
        [
            str(_tool(CHECKOV)),
            "-d",
            str(root),
            "--framework",
            "kubernetes",
            "--skip-download",  # no network: no guideline links
            "--output",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE"},
    )
    assert r.stdout.strip(), f"checkov printed nothing (exit {r.returncode}):\n{r.stderr[-3000:]}"
    report = json.loads(r.stdout)
    reports = report if isinstance(report, list) else [report]
    by = {name: {"passed": [], "failed": [], "skipped": []} for name in renderings}
    for rep in reports:
        results = rep.get("results", {})
        assert not results.get("parsing_errors"), results["parsing_errors"]
        for kind in ("passed", "failed", "skipped"):
            for c in results.get(f"{kind}_checks", []):
                by[Path(c["file_abs_path"]).parent.name][kind].append(c)
    return by


@pytest.mark.parametrize("name", MATRIX)
@pytest.mark.parametrize("which", list(HELMS))
def test_checkov_finds_nothing_unexplained(which, name, checkov_report, renderings):
    rep = checkov_report[f"{which}-{name}"]
    failed = [f"{c['check_id']} {c['check_name']} ({c['resource']})" for c in rep["failed"]]
    assert not failed, "checkov failed checks (fix them or skip them with a reason):\n" + "\n".join(
        failed
    )
    for c in rep["skipped"]:
        reason = (c.get("check_result") or {}).get("suppress_comment") or ""
        assert len(reason) > 20, f"{c['check_id']} on {c['resource']} is skipped without a reason"
    # Not vacuous: the Strata StatefulSets were scanned, and pass the hardening checks
    # (no privilege escalation, read-only root, NET_RAW and all capabilities dropped, no
    # token, non-root with a high uid, seccomp, probes, memory limits).
    hardening = {
        "CKV_K8S_8", "CKV_K8S_9", "CKV_K8S_13", "CKV_K8S_20", "CKV_K8S_22", "CKV_K8S_28",
        "CKV_K8S_31", "CKV_K8S_37", "CKV_K8S_38", "CKV_K8S_40",
    }  # fmt: skip
    for sts in renderings[f"{which}-{name}"].strata_sets():
        resource = f"StatefulSet.{NAMESPACE}.{sts['metadata']['name']}"
        passed = {c["check_id"] for c in rep["passed"] if c["resource"] == resource}
        assert hardening <= passed, f"{resource}: not passed: {sorted(hardening - passed)}"


@pytest.mark.parametrize("name", MATRIX)
def test_renderings_have_no_duplicate_keys(name, renderings):
    """yamllint on the raw output: duplicate keys (a label given twice, say) would be
    silently merged by most parsers."""
    rendering = renderings[f"helm4-{name}"]
    config = "{extends: relaxed, rules: {line-length: disable, key-duplicates: enable}}"
    r = subprocess.run(
        [
            str(_tool(VENV_BIN / "yamllint")),
            "-f",
            "parsable",
            "-d",
            config,
            str(rendering.dir / "all.yaml"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    errors = [line for line in r.stdout.splitlines() if "[error]" in line]
    assert not errors, "\n".join(errors)


def test_values_files_are_lint_clean():
    """yamllint (line length 100) on the chart's values, Chart.yaml and the test values."""
    files = [CHART / "values.yaml", CHART / "Chart.yaml", *sorted(VALUES.glob("*.yaml"))]
    config = "{extends: default, rules: {line-length: {max: 100}, document-start: disable}}"
    r = subprocess.run(
        [str(_tool(VENV_BIN / "yamllint")), "-f", "parsable", "-d", config, *map(str, files)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("name", MATRIX)
def test_helm3_and_helm4_render_the_same(name, renderings):
    def normal(r: Rendering) -> list[dict]:
        docs = json.loads(json.dumps(r.docs))
        for d in docs:  # generated credentials differ from run to run
            if d["kind"] == "Secret" and d["metadata"]["name"].endswith("-minio"):
                d["data"] = sorted(d["data"])
        return docs

    assert normal(renderings[f"helm3-{name}"]) == normal(renderings[f"helm4-{name}"])


@pytest.mark.parametrize("bad", BAD)
@pytest.mark.parametrize("which", list(HELMS))
def test_bad_values_are_rejected_with_a_clear_message(which, bad, helm_env):
    path = VALUES / f"{bad}.yaml"
    expected = [
        line.split(":", 1)[1].strip()
        for line in path.read_text().splitlines()
        if line.startswith(("# expect:", f"# expect-{which}:"))
    ]
    assert expected, f"{path} names no expected message for {which}"
    r = template(which, helm_env, "-f", str(path))
    assert r.returncode != 0, f"{bad} was accepted by {which}:\n{r.stdout[:2000]}"
    for text in expected:
        assert text in r.stderr, f"{which} rejected {bad} without saying {text!r}:\n{r.stderr}"


# --- what each scenario renders ---------------------------------------------------------------


def pod_fqdn(pod: str) -> str:
    return f"{pod}.{RELEASE}-headless.{NAMESPACE}.svc.{DOMAIN}"


def test_defaults_render_three_combined_nodes(renderings):
    r = renderings["helm4-defaults"]
    [sts] = r.strata_sets()
    spec = sts["spec"]
    pod = spec["template"]["spec"]
    c = strata_container(sts)
    env = env_of(c)
    assert spec["replicas"] == 3 and "ordinals" not in spec
    assert spec["podManagementPolicy"] == "Parallel"
    assert spec["serviceName"] == f"{RELEASE}-headless"
    assert env["STRATA_ROLES"]["value"] == "broker,meta"
    assert env["STRATA_NODE_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.labels['apps.kubernetes.io/pod-index']"
    )
    assert env["STRATA_META_VOTERS"]["value"] == ",".join(
        f"{i}@{pod_fqdn(f'{RELEASE}-{i}')}:9093" for i in range(3)
    )
    assert (
        env["STRATA_ADVERTISED_LISTENER"]["value"]
        == f"$(POD_NAME).{RELEASE}-headless.{NAMESPACE}.svc.{DOMAIN}:9092"
    )
    # $(POD_NAME) is only expanded if POD_NAME comes first.
    names = [e["name"] for e in c["env"]]
    assert names.index("POD_NAME") < names.index("STRATA_ADVERTISED_LISTENER")
    for k, v in {
        "STRATA_KAFKA_LISTEN": "0.0.0.0:9092",
        "STRATA_META_LISTEN": "0.0.0.0:9093",
        "STRATA_HTTP_LISTEN": "0.0.0.0:9644",
        "STRATA_DATA_DIR": "/var/lib/strata",
        "STRATA_KAFKA_DEFAULT_REPLICATION_FACTOR": "3",
        "STRATA_KAFKA_MIN_INSYNC_REPLICAS": "2",
        "STRATA_OBJECT_STORE": "s3://strata/cluster",
        "STRATA_S3_ENDPOINT": f"http://{RELEASE}-minio.{NAMESPACE}.svc.{DOMAIN}:9000",
    }.items():
        assert env[k]["value"] == v, k
    # Operations.
    assert pod["enableServiceLinks"] is False
    assert pod["automountServiceAccountToken"] is False
    assert pod["terminationGracePeriodSeconds"] >= 120
    assert pod["securityContext"]["runAsUser"] == 10001 and pod["securityContext"]["runAsNonRoot"]
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] and sc["capabilities"]["drop"] == ["ALL"]
    assert sc["seccompProfile"]["type"] == "RuntimeDefault" and not sc["allowPrivilegeEscalation"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"kafka": 9092, "meta": 9093, "http": 9644}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
    assert c["image"] == "ghcr.io/strata-io/strata:0.1.0" and c["args"] == ["serve"]
    assert "command" not in c  # the image's entrypoint, strata
    assert {t["topologyKey"] for t in pod["topologySpreadConstraints"]} == {
        "topology.kubernetes.io/zone",
        "kubernetes.io/hostname",
    }
    [claim] = spec["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "50Gi"
    assert {"name": "data", "mountPath": "/var/lib/strata"} in c["volumeMounts"]
    [pdb] = r.all("PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == spec["selector"]["matchLabels"]
    headless = r.get("Service", f"{RELEASE}-headless")
    assert headless["spec"]["clusterIP"] == "None" and headless["spec"]["publishNotReadyAddresses"]
    bootstrap = r.get("Service", RELEASE)
    assert bootstrap["spec"]["selector"].items() <= spec["template"]["metadata"]["labels"].items()
    # Off by default.
    for kind in ("ServiceMonitor", "PrometheusRule", "NetworkPolicy", "ClusterRole"):
        assert not r.all(kind), kind
    assert not r.has("ConfigMap", f"{RELEASE}-dashboard")
    # The in-chart MinIO, its credentials and the bucket Job.
    assert r.has("StatefulSet", f"{RELEASE}-minio") and r.has("Service", f"{RELEASE}-minio")
    secret = r.get("Secret", f"{RELEASE}-minio")
    assert set(secret["data"]) == {"rootUser", "rootPassword"}
    [job] = r.all("Job")
    assert job["spec"]["template"]["spec"]["containers"][0]["env"][2] == {
        "name": "BUCKET",
        "value": "strata",
    }
    assert (
        "mc mb --ignore-existing" in job["spec"]["template"]["spec"]["containers"][0]["command"][2]
    )
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {
        "name": f"{RELEASE}-minio",
        "key": "rootUser",
    }
    # The helm test hook.
    [test_pod] = r.all("Pod")
    assert test_pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert test_pod["spec"]["containers"][0]["image"] == "docker.io/edenhill/kcat:1.7.1"


def test_split_roles_get_ids_of_their_own(renderings):
    r = renderings["helm4-split"]
    sets = {s["metadata"]["name"]: s for s in r.strata_sets()}
    assert set(sets) == {f"{RELEASE}-meta", f"{RELEASE}-broker"}
    meta, broker = sets[f"{RELEASE}-meta"], sets[f"{RELEASE}-broker"]
    assert meta["spec"]["replicas"] == 3 and "ordinals" not in meta["spec"]
    assert broker["spec"]["replicas"] == 4 and broker["spec"]["ordinals"] == {"start": 100}
    voters = ",".join(f"{i}@{pod_fqdn(f'{RELEASE}-meta-{i}')}:9093" for i in range(3))
    for s, roles in ((meta, "meta"), (broker, "broker")):
        env = env_of(strata_container(s))
        assert env["STRATA_ROLES"]["value"] == roles
        assert env["STRATA_META_VOTERS"]["value"] == voters
    assert "STRATA_KAFKA_LISTEN" not in env_of(strata_container(meta))
    # The bootstrap Service sends clients to brokers only.
    bootstrap = r.get("Service", RELEASE)["spec"]["selector"]
    assert bootstrap["app.kubernetes.io/component"] == "broker"
    assert {p["metadata"]["name"] for p in r.all("PodDisruptionBudget")} == set(sets)
    # Voters keep small disks of their own.
    assert (
        meta["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "5Gi"
    )
    # Rack from the node's zone, then the user's config file: one init container, with a
    # ClusterRole to read nodes, and a token only in that container.
    for s in sets.values():
        pod = s["spec"]["template"]["spec"]
        [init] = pod["initContainers"]
        script = init["command"][2]
        assert "kubectl get node" in script and "topology\\.kubernetes\\.io/zone" in script
        assert script.index("rack = ") < script.index("cat /etc/strata/user/strata.toml")
        assert (
            env_of(strata_container(s))["STRATA_CONFIG"]["value"] == "/etc/strata/node/strata.toml"
        )
        assert any(m["name"] == "kube-api-access" for m in init["volumeMounts"])
        assert not any(m["name"] == "kube-api-access" for m in strata_container(s)["volumeMounts"])
    role = r.all("ClusterRole")[0]
    assert role["rules"] == [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]}]
    binding = r.all("ClusterRoleBinding")[0]
    assert (
        binding["subjects"][0]["name"] == RELEASE
        and binding["roleRef"]["name"] == role["metadata"]["name"]
    )
    # Monitoring: the dashboard file as a labelled ConfigMap.
    dash = r.get("ConfigMap", f"{RELEASE}-dashboard")
    assert dash["metadata"]["labels"]["grafana_dashboard"] == "1"
    source = (CHART / "files" / "grafana" / "strata-dashboard.json").read_text()
    assert json.loads(dash["data"]["strata-dashboard.json"]) == json.loads(source)
    assert r.all("ServiceMonitor") and r.all("PrometheusRule")


def test_irsa_uses_the_role_and_no_keys(renderings):
    r = renderings["helm4-irsa"]
    sa = r.get("ServiceAccount", RELEASE)
    assert (
        sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
        == "arn:aws:iam::123456789012:role/strata"
    )
    assert sa["automountServiceAccountToken"] is False
    [sts] = r.strata_sets()
    assert sts["spec"]["template"]["spec"]["serviceAccountName"] == RELEASE
    env = env_of(strata_container(sts))
    assert env["STRATA_OBJECT_STORE"]["value"] == "s3://my-strata-bucket/prod/cluster-1"
    assert env["AWS_REGION"]["value"] == env["STRATA_S3_REGION"]["value"] == "eu-west-1"
    for absent in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "STRATA_S3_ENDPOINT",
        "STRATA_S3_ALLOW_HTTP",
    ):
        assert absent not in env
    assert not r.has("StatefulSet", f"{RELEASE}-minio") and not r.all("Job")
    assert (
        r.get("ServiceMonitor", RELEASE)["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    )


def test_static_keys_come_from_the_existing_secret(renderings):
    r = renderings["helm4-static-keys"]
    env = env_of(strata_container(r.strata_sets()[0]))
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {
        "name": "strata-s3-keys",
        "key": "access-key-id",
    }
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "strata-s3-keys",
        "key": "secret-access-key",
    }
    assert not r.all("Secret")  # the chart does not create it
    [policy] = r.all("NetworkPolicy")
    rules = policy["spec"]["ingress"]
    peers = {tuple(p["port"] for p in rule["ports"]): rule.get("from") for rule in rules}
    assert (
        peers[(9092, 9093, 9644)][0]["podSelector"]["matchLabels"]["app.kubernetes.io/name"]
        == "strata"
    )
    assert {"podSelector": {"matchLabels": {"strata.io/client": "true"}}} in peers[(9092,)]
    assert peers[(9644,)][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "monitoring"
    }
    # The helm test pod is a client the policy lets in.
    assert r.all("Pod")[0]["metadata"]["labels"]["strata.io/client"] == "true"


def test_s3_compatible_endpoint(renderings):
    env = env_of(strata_container(renderings["helm4-s3-compatible"].strata_sets()[0]))
    assert env["STRATA_S3_ENDPOINT"]["value"] == "http://rgw.storage.svc.cluster.local:7480"
    assert env["STRATA_S3_PATH_STYLE"]["value"] == "true"
    assert env["STRATA_S3_ALLOW_HTTP"]["value"] == "true"


def test_minio_with_existing_secret_and_settings(renderings):
    r = renderings["helm4-minio"]
    assert not r.all("Secret")
    minio = r.get("StatefulSet", f"{RELEASE}-minio")
    assert "volumeClaimTemplates" not in minio["spec"]
    env = env_of(strata_container(r.strata_sets()[0]))
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "minio-root"
    # Kafka and Strata settings become STRATA_ variables, large numbers printed whole.
    assert env["STRATA_KAFKA_LOG_RETENTION_MS"]["value"] == "604800000"
    assert env["STRATA_KAFKA_NUM_PARTITIONS"]["value"] == "6"
    assert env["STRATA_WAL_MAX_UNUPLOADED_BYTES"]["value"] == "1073741824"
    assert env["STRATA_TIER_CACHE_DISK_BYTES"]["value"] == "4294967296"
    assert env["STRATA_LOG_LEVEL"]["value"] == "info,strata_replication=debug"


def test_emptydir_brokers_keep_voters_on_claims(renderings):
    r = renderings["helm4-emptydir"]
    sets = {s["metadata"]["name"]: s for s in r.strata_sets()}
    broker = sets[f"{RELEASE}-broker"]
    assert "volumeClaimTemplates" not in broker["spec"]
    vols = {v["name"]: v for v in broker["spec"]["template"]["spec"]["volumes"]}
    assert vols["data"] == {"name": "data", "emptyDir": {"sizeLimit": "20Gi"}}
    assert sets[f"{RELEASE}-meta"]["spec"]["volumeClaimTemplates"]


def test_external_load_balancer_per_broker(renderings):
    r = renderings["helm4-external-lb"]
    external = [s for s in r.all("Service") if s["metadata"]["name"].endswith("-external")]
    assert [s["metadata"]["name"] for s in external] == [
        f"{RELEASE}-{i}-external" for i in range(3)
    ]
    for i, s in enumerate(external):
        assert s["spec"]["type"] == "LoadBalancer"
        assert s["spec"]["selector"]["statefulset.kubernetes.io/pod-name"] == f"{RELEASE}-{i}"
        assert (
            s["spec"]["ports"][0]["port"] == 9094 and s["spec"]["ports"][0]["targetPort"] == "kafka"
        )
        assert (
            s["metadata"]["annotations"]["external-dns.alpha.kubernetes.io/hostname"]
            == f"{RELEASE}-{i}.kafka.example.com"
        )
        assert s["spec"]["loadBalancerSourceRanges"] == ["10.0.0.0/8"]
    env = env_of(strata_container(r.strata_sets()[0]))
    assert env["STRATA_ADVERTISED_LISTENER"]["value"] == "$(POD_NAME).kafka.example.com:9094"
    # The metadata quorum stays on the headless Service.
    assert env["STRATA_META_ADVERTISED"]["value"].endswith(
        f"-headless.{NAMESPACE}.svc.{DOMAIN}:9093"
    )


def test_external_node_port_per_broker(renderings, tmp_path):
    """A NodePort Service per broker on 31090 + ordinal; the node-config init container
    writes the advertised listener (the node's IP and that port) and the rack, which is
    checked by running its script for pod 1 with a stub kubectl."""
    r = renderings["helm4-external-nodeport"]
    external = [s for s in r.all("Service") if s["metadata"]["name"].endswith("-external")]
    assert [s["spec"]["ports"][0]["nodePort"] for s in external] == [31090, 31091, 31092]
    assert all(s["spec"]["type"] == "NodePort" for s in external)
    [sts] = r.strata_sets()
    assert "STRATA_ADVERTISED_LISTENER" not in env_of(strata_container(sts))
    pod = PodPlan.of(sts, 1, "127.0.0.1", "node-b", "203.0.113.7")
    sandbox = Sandbox(tmp_path / "sandbox", {})
    try:
        [init] = sts["spec"]["template"]["spec"]["initContainers"]
        code, out = run_container(
            sandbox, pod, init, Objects(r.docs), tmp_path, {}, {"node-b": "eu-west-1b"}
        )
        assert code == 0, out
        toml = (tmp_path / pod.name / "volumes" / "node-config" / "strata.toml").read_text()
        assert toml == 'rack = "eu-west-1b"\nadvertised_listener = "203.0.113.7:31091"\n'
    finally:
        sandbox.cleanup()


def test_security_values_protect_the_client_listener(renderings):
    """security.protocol=SASL_SSL: clients get the CLIENT listener on 9092 with TLS from
    the Secret and SCRAM users from theirs; brokers replicate on the INTERNAL PLAINTEXT
    listener, which the NetworkPolicy opens to the release's pods only; ACLs on, with the
    internal principal among the super users; the admin token from its Secret."""
    r = renderings["helm4-secure"]
    [sts] = r.strata_sets()
    c = strata_container(sts)
    env = env_of(c)
    fqdn = f"$(POD_NAME).{RELEASE}-headless.{NAMESPACE}.svc.{DOMAIN}"
    assert "STRATA_KAFKA_LISTEN" not in env and "STRATA_ADVERTISED_LISTENER" not in env
    assert env["STRATA_KAFKA_LISTENERS"]["value"] == "INTERNAL://0.0.0.0:9095,CLIENT://0.0.0.0:9092"
    assert env["STRATA_KAFKA_ADVERTISED_LISTENERS"]["value"] == (
        f"INTERNAL://{fqdn}:9095,CLIENT://{fqdn}:9092"
    )
    assert env["STRATA_KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"]["value"] == "INTERNAL:PLAINTEXT,CLIENT:SASL_SSL"
    assert env["STRATA_KAFKA_INTER_BROKER_LISTENER_NAME"]["value"] == "INTERNAL"
    assert env["STRATA_KAFKA_SSL_KEYSTORE_LOCATION"]["value"] == "/etc/strata/tls"
    assert env["STRATA_KAFKA_SASL_ENABLED_MECHANISMS"]["value"] == "SCRAM-SHA-512,OAUTHBEARER"
    assert env["STRATA_SCRAM_BOOTSTRAP"]["valueFrom"]["secretKeyRef"] == {
        "name": "strata-users", "key": "scram-bootstrap"
    }
    assert env["STRATA_KAFKA_AUTHORIZER_CLASS_NAME"]["value"].endswith("StandardAuthorizer")
    assert env["STRATA_KAFKA_SUPER_USERS"]["value"] == "User:ANONYMOUS;User:admin;User:CN=ops,O=Example"
    assert env["STRATA_HTTP_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "strata-admin-token", "key": "admin-token"
    }
    assert {"name": "internal", "containerPort": 9095} in c["ports"]
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert mounts["tls"]["mountPath"] == "/etc/strata/tls" and mounts["tls"]["readOnly"]
    vols = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    assert vols["tls"]["secret"]["secretName"] == "strata-tls"
    assert {i["path"] for i in vols["tls"]["secret"]["items"]} == {"tls.key", "tls.crt"}
    [policy] = r.all("NetworkPolicy")
    own, clients = policy["spec"]["ingress"][0], policy["spec"]["ingress"][1]
    assert {"port": 9095} in own["ports"] and "podSelector" in own["from"][0]
    assert clients["ports"] == [{"port": 9092}], "clients never reach the internal listener"


def test_notes_print_the_bootstrap_address_and_a_kcat_command(helm_env):
    r = helm(
        "helm4",
        helm_env,
        "install",
        RELEASE,
        str(CHART),
        "--dry-run=client",
        "--namespace",
        NAMESPACE,
    )
    assert r.returncode == 0, r.stderr
    notes = r.stdout[r.stdout.index("NOTES:") :]
    bootstrap = f"{RELEASE}.{NAMESPACE}.svc.{DOMAIN}:9092"
    assert bootstrap in notes
    assert re.search(
        r"--image=docker.io/edenhill/kcat:1.7.1 -- \\\n\s+-b " + re.escape(bootstrap) + " -L", notes
    ), notes
    assert f"helm test {RELEASE}" in notes


# --- the rendered chart runs ------------------------------------------------------------------


class Objects:
    """The rendered objects (plus any that exist in the cluster beforehand), for resolving
    secretKeyRef, configMapKeyRef and configMap volumes."""

    def __init__(self, docs: list[dict]):
        self.docs = list(docs)

    def find(self, kind: str, name: str) -> dict:
        for d in self.docs:
            if d["kind"] == kind and d["metadata"]["name"] == name:
                return d
        raise AssertionError(
            f"the pod refers to {kind} {name}, which neither the chart nor the test creates"
        )

    def data(self, kind: str, name: str) -> dict[str, str]:
        d = self.find(kind, name)
        out = dict(d.get("stringData") or {})
        if kind == "Secret":
            out.update({k: base64.b64decode(v).decode() for k, v in (d.get("data") or {}).items()})
        else:
            out.update(d.get("data") or {})
        return out


@dataclass
class PodPlan:
    """One pod of a StatefulSet, as the controller and the scheduler would make it."""

    sts: dict
    name: str
    ordinal: int
    ip: str
    node: str
    host_ip: str
    labels: dict = field(default_factory=dict)

    @classmethod
    def of(cls, sts: dict, index: int, ip: str, node: str, host_ip: str | None = None) -> PodPlan:
        start = sts["spec"].get("ordinals", {}).get("start", 0)
        ordinal = start + index
        name = f"{sts['metadata']['name']}-{ordinal}"
        labels = {
            **sts["spec"]["template"]["metadata"]["labels"],
            "apps.kubernetes.io/pod-index": str(ordinal),
            "statefulset.kubernetes.io/pod-name": name,
        }
        return cls(sts, name, ordinal, ip, node, host_ip or ip, labels)

    @property
    def spec(self) -> dict:
        return self.sts["spec"]["template"]["spec"]

    @property
    def fqdn(self) -> str:
        return f"{self.name}.{self.sts['spec']['serviceName']}.{NAMESPACE}.svc.{DOMAIN}"

    def field(self, path: str) -> str:
        """A downward-API fieldRef."""
        m = re.fullmatch(r"metadata\.labels\['([^']+)'\]", path)
        if m:
            assert m.group(1) in self.labels, f"pod {self.name} has no label {m.group(1)}"
            return self.labels[m.group(1)]
        values = {
            "metadata.name": self.name,
            "metadata.namespace": NAMESPACE,
            "spec.nodeName": self.node,
            "spec.serviceAccountName": self.spec.get("serviceAccountName", "default"),
            "status.podIP": self.ip,
            "status.hostIP": self.host_ip,
        }
        assert path in values, f"fieldRef {path} is not resolved by this test"
        return values[path]


_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def expand(value: str, defined: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: a variable defined earlier in the container's env is
    replaced, an unknown reference stays as written, $$ is a literal $."""
    return _VAR_REF.sub(
        lambda m: "$" if m.group(0) == "$$" else defined.get(m.group(1), m.group(0)), value
    )


def runtime_env(pod: PodPlan, objects: Objects) -> dict[str, str]:
    """What the runtime gives every container besides its env list: the image's PATH,
    HOSTNAME, the kubernetes Service's variables (always injected), and, unless the pod
    says enableServiceLinks: false, docker-link variables for every Service of the
    namespace that has a cluster IP (STRATA_SERVICE_HOST for a Service named strata,
    which Strata would refuse as an unknown setting)."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "HOSTNAME": pod.name,
        "KUBERNETES_SERVICE_HOST": "10.96.0.1",
        "KUBERNETES_SERVICE_PORT": "443",
        "KUBERNETES_SERVICE_PORT_HTTPS": "443",
        "KUBERNETES_PORT": "tcp://10.96.0.1:443",
    }
    if pod.spec.get("enableServiceLinks", True):
        for i, svc in enumerate(d for d in objects.docs if d["kind"] == "Service"):
            if svc["spec"].get("clusterIP") == "None":
                continue
            prefix = svc["metadata"]["name"].upper().replace("-", "_")
            ip, port = f"10.96.1.{i + 1}", svc["spec"]["ports"][0]["port"]
            env[f"{prefix}_SERVICE_HOST"] = ip
            env[f"{prefix}_SERVICE_PORT"] = str(port)
            env[f"{prefix}_PORT"] = f"tcp://{ip}:{port}"
    return env


def container_env(pod: PodPlan, container: dict, objects: Objects) -> tuple[dict, dict]:
    """(what the runtime adds, the variables the container's env list defines)."""
    defined: dict[str, str] = {}
    for e in container.get("env", []):
        if "value" in e:
            defined[e["name"]] = expand(str(e["value"]), defined)
            continue
        src = e["valueFrom"]
        if "fieldRef" in src:
            defined[e["name"]] = pod.field(src["fieldRef"]["fieldPath"])
        elif "secretKeyRef" in src or "configMapKeyRef" in src:
            kind, ref = (
                ("Secret", src["secretKeyRef"])
                if "secretKeyRef" in src
                else ("ConfigMap", src["configMapKeyRef"])
            )
            data = objects.data(kind, ref["name"])
            if ref["key"] not in data and ref.get("optional"):
                continue
            assert ref["key"] in data, f"{kind} {ref['name']} has no key {ref['key']}"
            defined[e["name"]] = data[ref["key"]]
        else:
            raise AssertionError(f"env source not resolved by this test: {src}")
    return runtime_env(pod, objects), defined


def container_volumes(
    pod: PodPlan, container: dict, objects: Objects, root: Path
) -> dict[str, Path]:
    """mountPath -> a local directory per pod volume (shared by the pod's containers),
    filled as the kubelet would fill it."""
    volumes = {v["name"]: v for v in pod.spec.get("volumes", [])}
    claims = {c["metadata"]["name"] for c in pod.sts["spec"].get("volumeClaimTemplates", [])}
    paths = {}
    for m in container.get("volumeMounts", []):
        local = root / pod.name / "volumes" / m["name"]
        v = volumes.get(m["name"])
        if not local.exists():
            local.mkdir(parents=True)
            if v is None:
                assert m["name"] in claims, f"{pod.name}: volume {m['name']} is not defined"
            elif "configMap" in v:
                data = objects.data("ConfigMap", v["configMap"]["name"])
                for item in v["configMap"].get("items") or [{"key": k, "path": k} for k in data]:
                    (local / item["path"]).write_text(data[item["key"]])
            elif "projected" in v:  # the API token: nothing local talks to an API server
                (local / "token").write_text("test-token")
                (local / "namespace").write_text(NAMESPACE)
            else:
                assert "emptyDir" in v, f"{pod.name}: volume type not handled: {v}"
        paths[m["mountPath"]] = local / m.get("subPath", "")
    return paths


def container_argv(container: dict, defined: dict, entrypoints: dict[str, list[str]]):
    """(the image's entrypoint, the pod spec's argv): command/args over the image's
    ENTRYPOINT, with $(VAR) references expanded."""
    if "command" in container:
        entrypoint, argv = [], container["command"] + container.get("args", [])
    else:
        image = container["image"].split("@")[0].rsplit(":", 1)[0]
        assert image in entrypoints, f"no entrypoint known for image {container['image']}"
        entrypoint, argv = entrypoints[image], container.get("args", [])
    return entrypoint, [expand(a, defined) for a in argv]


def start_container(
    sandbox, pod, container, objects, root, entrypoints, path_prefix=None, run=None
):
    """Starts (or with run=timeout, runs to completion) one container of `pod` as a local
    process: its argv and env as the pod spec gives them, on the pod's address, its
    volumes as local directories."""
    base, defined = container_env(pod, container, objects)
    if path_prefix:
        base["PATH"] = f"{path_prefix}:{base['PATH']}"
    entrypoint, argv = container_argv(container, defined, entrypoints)
    kwargs = dict(
        listen_ip=pod.ip,
        paths=container_volumes(pod, container, objects, root),
        entrypoint=entrypoint,
        base_env=base,
    )
    name = pod.name if container["name"] == "strata" else f"{pod.name}-{container['name']}"
    if run is not None:
        return sandbox.run(name, argv, defined, timeout=run, **kwargs)
    return sandbox.start(name, argv, defined, cwd=root / pod.name, **kwargs)


def stub_kubectl(directory: Path, zones: dict[str, str]) -> Path:
    """A `kubectl` that answers `get node NAME -o jsonpath={.metadata.labels.<zone key>}`
    with the node's zone and refuses anything else."""
    directory.mkdir(parents=True, exist_ok=True)
    cases = "".join(f'  {node}) printf %s "{zone}" ;;\n' for node, zone in zones.items())
    script = directory / "kubectl"
    script.write_text(
        "#!/bin/sh\n"
        "# Stands in for kubectl in the rack init container.\n"
        'want="jsonpath={.metadata.labels.topology\\.kubernetes\\.io/zone}"\n'
        'if [ "$1 $2" != "get node" ] || [ "$4" != "-o" ] || [ "$5" != "$want" ]; then\n'
        '  echo "stub kubectl: unexpected arguments: $*" >&2; exit 2\n'
        "fi\n"
        'case "$3" in\n' + cases + '  *) echo "stub kubectl: no node $3" >&2; exit 1 ;;\nesac\n'
    )
    script.chmod(0o755)
    return directory


def run_container(sandbox, pod, container, objects, root, entrypoints, zones, timeout=60.0):
    """Runs a one-shot container (an init container) of `pod` to completion, with the
    stub kubectl first on its PATH."""
    stubs = stub_kubectl(root / "stub-bin", zones)
    return start_container(sandbox, pod, container, objects, root, entrypoints, stubs, run=timeout)


def http_get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def probe_url(pod: PodPlan, container: dict, probe: str) -> str:
    """The URL a probe of the container checks, on the pod's address."""
    get = container[probe]["httpGet"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    port = ports[get["port"]] if isinstance(get["port"], str) else get["port"]
    return f"http://{pod.ip}:{port}{get['path']}"


RUN_SCENARIOS = {
    # The defaults (3 combined nodes), with the S3-compatible store of s3-compatible.yaml.
    "combined": {},
    # Split roles, 3 voters (ids 0-2) and 3 brokers (ids 100-102), each pod's rack from
    # its node's zone (the init container, with a stub kubectl) before a config file of
    # the user's (the rack line must come before its [kafka] table).
    "split": {
        "mode": "split",
        "broker": {"replicas": 3},
        "rack": {"enabled": True},
        "configFile": "[kafka]\nnum.partitions = 2\n",
    },
}


@pytest.mark.parametrize("scenario", list(RUN_SCENARIOS))
def test_rendered_chart_runs(scenario, strata_binary, rgw, helm_env, tmp_path, request):
    """Runs the rendered StatefulSets' pods as local processes against radosgw: the
    cluster forms, clients produce and consume through the bootstrap Service's name,
    and the `helm test` pod passes."""
    bucket = f"strata-helm-{uuid.uuid4().hex[:10]}"
    rgw.s3_client().create_bucket(Bucket=bucket)
    overrides = {
        "objectStore": {"endpoint": rgw.endpoint, "bucket": bucket, "region": rgw.region},
        **RUN_SCENARIOS[scenario],
    }
    r = render("helm4", helm_env, tmp_path / "rendering", "s3-compatible", overrides)
    # The Secret the values name as objectStore.existingSecret, as
    # `kubectl create secret generic strata-s3 --from-literal=...` would make it.
    objects = Objects(r.docs)
    objects.docs.append(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "strata-s3", "namespace": NAMESPACE},
            "data": {
                "AWS_ACCESS_KEY_ID": base64.b64encode(rgw.access_key.encode()).decode(),
                "AWS_SECRET_ACCESS_KEY": base64.b64encode(rgw.secret_key.encode()).decode(),
            },
        }
    )

    # Plan the pods: addresses, nodes (each in a zone), DNS names.
    block = loopback_block()
    pods: list[PodPlan] = []
    for sts in r.strata_sets():
        for i in range(sts["spec"]["replicas"]):
            n = len(pods)
            pods.append(PodPlan.of(sts, i, f"{block}.{n + 1}", f"node-{n}"))
    zones = {p.node: f"zone-{'abc'[i % 3]}" for i, p in enumerate(pods)}
    # Pod DNS names: from the start if the headless Service publishes not-ready
    # addresses, else (as cluster DNS does) only once a pod is ready.
    hosts = {p.fqdn: p.ip for p in pods if publishes_not_ready(r, p)}
    # Each Service with a selector resolves to the first pod it selects (a ClusterIP
    # stands for any of them; clients connect once all pods are ready).
    for svc in r.all("Service"):
        sel = svc["spec"].get("selector")
        if not sel or svc["spec"].get("clusterIP") == "None":
            continue
        chosen = [p for p in pods if sel.items() <= p.labels.items()]
        assert chosen, f"Service {svc['metadata']['name']} selects no pod"
        hosts[f"{svc['metadata']['name']}.{NAMESPACE}.svc.{DOMAIN}"] = chosen[0].ip
    bootstrap_pods = [
        p for p in pods if r.get("Service", RELEASE)["spec"]["selector"].items() <= p.labels.items()
    ]
    brokers = [
        p for p in pods if "broker" in env_of(strata_container(p.sts))["STRATA_ROLES"]["value"]
    ]
    assert bootstrap_pods == brokers, "the bootstrap Service must select exactly the brokers"

    sandbox = Sandbox(tmp_path / "sandbox", hosts)
    entrypoints = {"ghcr.io/strata-io/strata": [str(strata_binary)]}
    request.node._strata_brokers = []  # conftest prints these logs if the test fails
    try:

        def start(pod: PodPlan) -> LocalProcess:
            # Init containers first, in order, each to completion; then the broker.
            for init in pod.spec.get("initContainers", []):
                code, out = run_container(sandbox, pod, init, objects, tmp_path, entrypoints, zones)
                assert code == 0, f"init container {init['name']} of {pod.name} failed:\n{out}"
            [c] = pod.spec["containers"]
            proc = start_container(sandbox, pod, c, objects, tmp_path, entrypoints)
            request.node._strata_brokers.append(proc)
            return proc

        def on_ready(pod: PodPlan) -> None:
            if pod.fqdn not in sandbox.hosts:
                sandbox.hosts[pod.fqdn] = pod.ip
                sandbox.write_hosts()

        processes = run_statefulsets(pods, start, on_ready)

        # The cluster as the metadata quorum sees it: every broker registered with its
        # pod's DNS name and its node's zone, the voters as the chart lists them.
        status, body = http_get(f"http://{pods[0].ip}:9644/api/v1/cluster")
        assert status == 200, body
        view = json.loads(body)
        racks = RUN_SCENARIOS[scenario].get("rack", {}).get("enabled")
        registered = {b["id"]: (b["endpoint"], b["rack"]) for b in view["brokers"]}
        assert registered == {
            p.ordinal: (f"{p.fqdn}:9092", zones[p.node] if racks else None) for p in brokers
        }
        voters = [
            p for p in pods if "meta" in env_of(strata_container(p.sts))["STRATA_ROLES"]["value"]
        ]
        assert sorted(view["voters"]) == sorted(p.ordinal for p in voters)

        # A client in the same kind of namespace, through the bootstrap Service's name.
        bootstrap = f"{RELEASE}.{NAMESPACE}.svc.{DOMAIN}:9092"
        topic = f"helm-run-{uuid.uuid4().hex[:8]}"
        client_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        script = (
            f"set -e\n"
            f"kcat -b {bootstrap} -L -t {topic} >/dev/null\n"  # creates it
            f"printf 'k1:hello from helm\\n' | kcat -b {bootstrap} -t {topic} -P -K: -X acks=all\n"
            f"kcat -b {bootstrap} -t {topic} -C -o beginning -c 1 -e -f '%k=%s\\n' "
            "-X fetch.wait.max.ms=100\n"
            f"kcat -b {bootstrap} -L\n"
        )
        code, out = sandbox.run("client", ["/bin/sh", "-c", script], client_env, timeout=60)
        assert code == 0 and "k1=hello from helm" in out, out
        # Auto-created with the config file's num.partitions, if the scenario has one.
        partitions = 2 if "configFile" in RUN_SCENARIOS[scenario] else 1
        assert f'topic "{topic}" with {partitions} partitions' in out, out
        for p in brokers:  # clients are sent to each broker by its pod DNS name
            assert f"{p.fqdn}:9092" in out, out

        # The chart's `helm test` pod, run the same way.
        [test_pod] = [
            d for d in r.all("Pod") if d["metadata"]["annotations"].get("helm.sh/hook") == "test"
        ]
        tp = PodPlan(
            sts={"spec": {"template": {"spec": test_pod["spec"]}, "serviceName": ""}},
            name=test_pod["metadata"]["name"],
            ordinal=0,
            ip=f"{block}.200",
            node="node-0",
            host_ip=f"{block}.200",
            labels=test_pod["metadata"]["labels"],
        )
        [c] = test_pod["spec"]["containers"]
        code, out = start_container(sandbox, tp, c, objects, tmp_path, entrypoints, run=90)
        assert code == 0 and "ok: helm-test-" in out, f"the helm test pod failed ({code}):\n{out}"

        # The brokers wrote to the bucket the chart pointed them at.
        listed = rgw.s3_client().list_objects_v2(Bucket=bucket, Prefix="cluster/")
        keys = {o["Key"] for o in listed.get("Contents", [])}
        assert "cluster/_strata/cluster-id" in keys, keys

        # SIGTERM (controlled shutdown): every process exits cleanly within the grace
        # period. Brokers-only pods first, while the voters still have a quorum to hand
        # their partitions over through (as an operator scaling down would).
        grace = pods[0].spec["terminationGracePeriodSeconds"]
        codes = {}
        for wave in ([p for p in pods if p not in voters], voters):
            if wave:
                with ThreadPoolExecutor(len(wave)) as pool:
                    stops = pool.map(lambda p: processes[p.name].stop(timeout=grace), wave)
                    codes.update(zip((p.name for p in wave), stops, strict=True))
        assert all(code == 0 for code in codes.values()), {
            name: (code, processes[name].log_tail()) for name, code in codes.items() if code
        }
    finally:
        sandbox.cleanup()
    assert not any(p.running() for p in sandbox.processes)


def publishes_not_ready(r: Rendering, pod: PodPlan) -> bool:
    headless = r.get("Service", pod.sts["spec"]["serviceName"])
    return bool(headless["spec"].get("publishNotReadyAddresses"))


def run_statefulsets(pods: list[PodPlan], start, on_ready, timeout: float = 60.0) -> dict:
    """Starts the pods as their StatefulSet controllers would (all at once with
    podManagementPolicy Parallel; with OrderedReady, each once the previous one of its
    set is ready) and waits until every readiness probe passes; liveness must pass as
    soon as readiness does. Fails early if a process exits. Returns name -> process."""
    processes: dict[str, LocalProcess] = {}
    ready: set[str] = set()
    deadline = time.monotonic() + timeout
    while len(ready) < len(pods):
        for pod in pods:
            if pod.name in processes:
                continue
            siblings = [q for q in pods if q.sts is pod.sts]
            parallel = pod.sts["spec"].get("podManagementPolicy", "OrderedReady") == "Parallel"
            if parallel or all(q.name in ready for q in siblings[: siblings.index(pod)]):
                processes[pod.name] = start(pod)
        for pod in pods:
            proc = processes.get(pod.name)
            if proc is None or pod.name in ready:
                continue
            assert proc.running(), f"{pod.name} exited with {proc.returncode()}:\n{proc.log_tail()}"
            c = pod.spec["containers"][0]
            try:
                if http_get(probe_url(pod, c, "readinessProbe"))[0] == 200:
                    assert http_get(probe_url(pod, c, "livenessProbe"))[0] == 200
                    ready.add(pod.name)
                    on_ready(pod)
            except OSError:
                pass
        if len(ready) < len(pods) and time.monotonic() > deadline:
            waiting = [p.name for p in pods if p.name not in ready]
            raise AssertionError(
                f"not ready within {timeout:.0f}s: {waiting} (never started: "
                f"{[n for n in waiting if n not in processes]})\n"
                + "\n".join(
                    f"--- {n}\n{processes[n].log_tail(30)}" for n in waiting if n in processes
                )
            )
        time.sleep(0.25)
    return processes
