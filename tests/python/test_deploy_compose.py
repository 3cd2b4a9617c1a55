"""compose.yaml: validated against the Compose Specification, checked for the cluster
layout it promises, and run without a container engine.

The run test does what `docker compose up` would, with local processes: each Strata
service's command (the image's ENTRYPOINT and CMD unless the service overrides them)
runs with the environment its container would get (the Dockerfile's ENV, then the
service's `environment`). Containers become loopback addresses: every network namespace
(a service, or the service another one joins with `network_mode: service:X`) gets its
own address in a random 127.A.B.0/24 block, and every process runs in a private mount
namespace whose /etc/hosts maps the compose host names (service names, and `localhost`,
which in compose.yaml means the namespace the Strata nodes share) to those addresses;
listeners on 0.0.0.0 bind their namespace's address instead, and the data directory is a
local directory standing in for the node's volume (localpods.Sandbox does the mount
namespaces and rewrites; ComposeSandbox below only changes what `localhost` is). The
health check each service declares must pass against its node. Published ports are the
same number on the host, so the host's `localhost:<port>` is that address too, and the
client (a confluent-kafka process in the same kind of mount namespace) uses exactly the
bootstrap address the README gives.

MinIO is stood in for by the session's radosgw (conftest `rgw`): a forwarder on the
`minio` service's address and port passes the S3 traffic to it, so the brokers use the
endpoint, path-style addressing and plain http exactly as configured; the S3 keys become
radosgw's, and the bucket the `minio-init` service creates gets a unique suffix (the
radosgw is shared by the whole session) before the test creates it.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import yaml

from localpods import Sandbox, loopback_block
from test_dockerfile import documented_env_vars, dockerfile_stages, image_env

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "compose.yaml"
README = REPO / "README.md"
VENV = REPO / ".venv" / "bin"
DASHBOARD = "helm/strata/files/grafana/strata-dashboard.json"
ALERTS = "helm/strata/files/prometheus/strata-alerts.yaml"
PROMETHEUS_YML = "deploy/compose/prometheus/prometheus.yml"
YAMLLINT_CONFIG = (
    "{extends: default, rules: {line-length: {max: 100}, document-start: disable, "
    "truthy: {check-keys: false}}}"
)
READY_TIMEOUT_S = 60.0


# --- reading compose.yaml ----------------------------------------------------------------


def load_compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def strata_services(compose: dict) -> dict[str, dict]:
    """The services that run a Strata node (the image, with a node id)."""
    return {
        name: svc
        for name, svc in compose["services"].items()
        if str(svc.get("image", "")).startswith("ghcr.io/strata-io/strata:")
        and "STRATA_NODE_ID" in environment(svc)
    }


def container_env(service: dict) -> dict[str, str]:
    """What the container's process sees: the image's ENV, then the service's."""
    return {**image_env(), **environment(service)}


def container_argv(service: dict) -> list[str]:
    runtime = dockerfile_stages()[-1]
    entrypoint = service.get("entrypoint", runtime.exec_form("ENTRYPOINT") or [])
    command = service.get("command", runtime.exec_form("CMD") or [])
    return as_argv(entrypoint) + as_argv(command)


def as_argv(value) -> list[str]:
    """A compose entrypoint or command: a list, or a string split as a shell would."""
    if value is None:
        return []
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


def netns_of(compose: dict, name: str) -> str:
    """The service whose network namespace `name` runs in."""
    mode = compose["services"][name].get("network_mode", "")
    return mode.split(":", 1)[1] if mode.startswith("service:") else name


def published(service: dict) -> dict[int, int]:
    """Container port -> host port of a service's `ports`."""
    out = {}
    for p in service.get("ports", []):
        if isinstance(p, dict):
            out[int(p["target"])] = int(p.get("published", p["target"]))
            continue
        parts = str(p).split("/")[0].split(":")
        host, container = (parts[-2], parts[-1]) if len(parts) >= 2 else (parts[0], parts[0])
        out[int(container)] = int(host)
    return out


def port_of(addr: str) -> int:
    return int(addr.rsplit(":", 1)[1])


def host_of(addr: str) -> str:
    return addr.rsplit(":", 1)[0]


def bucket_and_prefix(url: str) -> tuple[str, str]:
    m = re.fullmatch(r"s3://([^/]+)/?(.*)", url)
    assert m, f"not an s3:// object store: {url}"
    return m.group(1), m.group(2)


def mc_created_bucket(compose: dict) -> str:
    """The bucket the one-shot `mc mb ALIAS/BUCKET` service creates."""
    for svc in compose["services"].values():
        argv = as_argv(svc.get("entrypoint")) + as_argv(svc.get("command"))
        if str(svc.get("image", "")).startswith("minio/mc") and "mb" in argv:
            target = argv[-1]
            return target.split("/", 1)[1]
    raise AssertionError("no minio/mc service creating a bucket")


def readme_bootstrap() -> str:
    """The bootstrap address the README's compose section tells users to use."""
    text = README.read_text()
    section = text.split("### Docker Compose with MinIO", 1)[1].split("\n### ", 1)[0]
    m = re.search(r"kcat -b (\S+)", section)
    assert m, "the README's compose section has no kcat example"
    return m.group(1)


# --- static checks -----------------------------------------------------------------------


def test_compose_file_matches_the_compose_specification():
    r = subprocess.run(
        [str(VENV / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, f"{r.stdout}\n{r.stderr}"


def test_yaml_lint():
    files = [COMPOSE, *sorted((REPO / "deploy" / "compose").rglob("*.y*ml"))]
    r = subprocess.run(
        [str(VENV / "yamllint"), "-f", "parsable", "-d", YAMLLINT_CONFIG, *map(str, files)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_cluster_layout():
    compose = load_compose()
    nodes = strata_services(compose)
    assert sorted(nodes) == ["strata-1", "strata-2", "strata-3"], sorted(nodes)
    envs = {name: container_env(svc) for name, svc in nodes.items()}
    assert sorted(int(e["STRATA_NODE_ID"]) for e in envs.values()) == [1, 2, 3]
    voters_lists = {e["STRATA_META_VOTERS"] for e in envs.values()}
    assert len(voters_lists) == 1, f"the voters list must be the same everywhere: {voters_lists}"
    voters = dict(v.split("@", 1) for v in voters_lists.pop().split(","))
    assert sorted(voters) == ["1", "2", "3"]
    documented = documented_env_vars()
    shared_netns = {netns_of(compose, n) for n in nodes}
    assert len(shared_netns) == 1, (
        "the design needs every node in one network namespace (see compose.yaml): "
        f"{shared_netns}"
    )
    owner = compose["services"][shared_netns.pop()]
    ports = published(owner)
    seen_ports: set[int] = set()
    for name, svc in nodes.items():
        env = envs[name]
        unknown = {k for k in env if k.startswith("STRATA_")} - documented
        assert not unknown, f"{name}: not in docs/configuration.md (refused): {unknown}"
        assert env["STRATA_KAFKA_DEFAULT_REPLICATION_FACTOR"] == "3"
        assert env["STRATA_KAFKA_MIN_INSYNC_REPLICAS"] == "2"
        assert env["STRATA_S3_ENDPOINT"] == "http://minio:9000"
        assert env["STRATA_S3_PATH_STYLE"] == "true" and env["STRATA_S3_ALLOW_HTTP"] == "true"
        assert env["STRATA_META_ADVERTISED"] == voters[env["STRATA_NODE_ID"]], name
        kafka, meta, http = (
            port_of(env["STRATA_KAFKA_LISTEN"]),
            port_of(env["STRATA_META_LISTEN"]),
            port_of(env["STRATA_HTTP_LISTEN"]),
        )
        assert port_of(env["STRATA_META_ADVERTISED"]) == meta
        # One address for host clients and for the other brokers: localhost:<port>,
        # published under the same number.
        advertised = env["STRATA_ADVERTISED_LISTENER"]
        assert host_of(advertised) == "localhost" and port_of(advertised) == kafka, advertised
        assert ports.get(kafka) == kafka, f"{name}: Kafka port {kafka} not published as {kafka}"
        assert ports.get(http) == http, f"{name}: HTTP port {http} not published as {http}"
        assert not {kafka, meta, http} & seen_ports, f"{name}: port clash in the shared namespace"
        seen_ports |= {kafka, meta, http}
        # The image, built from this repository.
        assert svc["image"] == "ghcr.io/strata-io/strata:0.1.0"
        assert svc["build"] in (".", {"context": "."})
        assert svc.get("stop_grace_period"), f"{name}: leave time for controlled shutdown"
        deps = svc["depends_on"]
        assert deps["minio-init"]["condition"] == "service_completed_successfully"
        # Data on a named volume at the image's data directory.
        data_dir = env["STRATA_DATA_DIR"]
        mounts = [v for v in svc["volumes"] if str(v).endswith(f":{data_dir}")]
        assert mounts and mounts[0].split(":")[0] in compose["volumes"], (name, svc["volumes"])
        # Its health check asks its own HTTP port.
        test = " ".join(svc["healthcheck"]["test"])
        assert f"/{http}" in test and "/readyz" in test, test
    assert "localhost:9092" in {envs[n]["STRATA_ADVERTISED_LISTENER"] for n in nodes}
    # Host clients bootstrap from what the README says, and that is a broker.
    assert readme_bootstrap() == "localhost:9092"


def test_object_store_and_bucket_creation():
    compose = load_compose()
    services = compose["services"]
    nodes = strata_services(compose)
    stores = {container_env(s)["STRATA_OBJECT_STORE"] for s in nodes.values()}
    assert len(stores) == 1, stores
    bucket, prefix = bucket_and_prefix(stores.pop())
    assert prefix, "give the cluster a prefix in the bucket"
    assert mc_created_bucket(compose) == bucket
    minio = services["minio"]
    assert minio["image"].startswith("minio/minio:")
    assert "healthcheck" in minio
    init = next(s for s in services.values() if str(s.get("image", "")).startswith("minio/mc"))
    assert init["depends_on"]["minio"]["condition"] == "service_healthy"
    minio_env = environment(minio)
    alias = next(v for k, v in environment(init).items() if k.startswith("MC_HOST_"))
    user, password = re.match(r"https?://([^:]+):([^@]+)@", alias).groups()
    assert (user, password) == (minio_env["MINIO_ROOT_USER"], minio_env["MINIO_ROOT_PASSWORD"])
    for name, svc in nodes.items():
        env = container_env(svc)
        assert env["AWS_ACCESS_KEY_ID"] == user and env["AWS_SECRET_ACCESS_KEY"] == password, name


def _bind_sources(service: dict) -> dict[str, str]:
    """Bind mounts of a service, target -> source (relative to the repository)."""
    out = {}
    for v in service.get("volumes", []):
        if isinstance(v, dict):
            if v.get("type") == "bind":
                out[v["target"]] = v["source"].removeprefix("./")
        elif str(v).startswith("./"):
            source, target = str(v).split(":")[:2]
            out[target] = source.removeprefix("./")
    return out


def test_monitoring_profile_uses_the_chart_dashboard_and_alerts(tmp_path):
    compose = load_compose()
    services = compose["services"]
    prometheus, grafana = services["prometheus"], services["grafana"]
    for svc in (prometheus, grafana):
        assert svc.get("profiles") == ["monitoring"]
    prom_mounts = _bind_sources(prometheus)
    assert PROMETHEUS_YML in prom_mounts.values()
    assert ALERTS in prom_mounts.values(), prom_mounts
    graf_mounts = _bind_sources(grafana)
    assert DASHBOARD in graf_mounts.values(), graf_mounts
    for source in (*prom_mounts.values(), *graf_mounts.values()):
        assert (REPO / source).exists(), f"compose.yaml mounts {source}, which does not exist"

    # Prometheus scrapes every node's HTTP port where the nodes live, under a job whose
    # name the alert rules match, and loads the rules from where they are mounted.
    config = yaml.safe_load((REPO / PROMETHEUS_YML).read_text())
    (job,) = [j for j in config["scrape_configs"] if "strata" in j["job_name"]]
    targets = {t for sc in job["static_configs"] for t in sc["targets"]}
    nodes = strata_services(compose)
    owner = netns_of(compose, next(iter(nodes)))
    want = {f"{owner}:{port_of(container_env(s)['STRATA_HTTP_LISTEN'])}" for s in nodes.values()}
    assert targets == want, (targets, want)
    alerts_target = next(t for t, s in prom_mounts.items() if s == ALERTS)
    assert any(
        Path(alerts_target).match(pattern) or pattern == alerts_target
        for pattern in config["rule_files"]
    ), (config["rule_files"], alerts_target)
    # promtool on the same configuration with the rules where this checkout has them.
    local = dict(config, rule_files=[str(REPO / ALERTS)])
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(local))
    r = subprocess.run(
        ["promtool", "check", "config", str(tmp_path / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stdout + r.stderr

    # Grafana: Prometheus as the default data source, the dashboard's directory provisioned.
    provisioning_target, provisioning = next(
        (t, s) for t, s in graf_mounts.items() if t == "/etc/grafana/provisioning"
    )
    datasources = yaml.safe_load(
        (REPO / provisioning / "datasources" / "prometheus.yaml").read_text()
    )
    (ds,) = datasources["datasources"]
    assert ds["type"] == "prometheus" and ds["isDefault"] is True
    assert ds["url"] == "http://prometheus:9090"
    providers = yaml.safe_load((REPO / provisioning / "dashboards" / "strata.yaml").read_text())
    dashboard_target = next(t for t, s in graf_mounts.items() if s == DASHBOARD)
    (provider,) = providers["providers"]
    assert provider["options"]["path"] == str(Path(dashboard_target).parent)
    assert provisioning_target.startswith("/etc/grafana")
    # The dashboard finds that data source: every panel's datasource is the provisioned
    # uid or a datasource variable of the provisioned type (not an export's ${DS_...}
    # input, which file provisioning does not fill in).
    dashboard = json.loads((REPO / DASHBOARD).read_text())
    variables = {
        v["name"]: v.get("query")
        for v in dashboard.get("templating", {}).get("list", [])
        if v.get("type") == "datasource"
    }
    uids = set(re.findall(r'"datasource":\s*\{[^{}]*"uid":\s*"([^"]*)"', json.dumps(dashboard)))
    for uid in uids:
        var = re.fullmatch(r"\$\{?(\w+)\}?", uid)
        if var:
            assert variables.get(var.group(1)) == ds["type"], (uid, variables)
        else:
            assert uid in (ds["uid"], "-- Grafana --", "grafana"), f"unknown data source {uid}"


# --- the run -----------------------------------------------------------------------------


class Forwarder:
    """A TCP forwarder: connections to `listen` are piped to `target` (threads)."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int]):
        self.target = target
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(listen)
        self.sock.listen(64)
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.closed:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=10)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket):
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        self.closed = True
        self.sock.close()


class ComposeSandbox(Sandbox):
    """localpods.Sandbox, except for `localhost`: in compose.yaml it names the network
    namespace the Strata nodes share (and, through identically numbered published ports,
    the host), so the hosts file maps it to that namespace's address only. Sandbox's own
    127.0.0.1 and ::1 lines would come first in getaddrinfo's answer."""

    def write_hosts(self) -> None:
        text = "".join(f"{ip} {name}\n" for name, ip in sorted(self.hosts.items()))
        # In place, like Sandbox.write_hosts: the bind mounts refer to this inode.
        self.hosts_path.touch()
        with open(self.hosts_path, "r+") as f:
            f.truncate(0)
            f.write(text)


CLIENT = textwrap.dedent(
    """
    import json, sys, time, uuid
    from confluent_kafka import Consumer, Producer
    from confluent_kafka.admin import AdminClient

    bootstrap, count = sys.argv[1], int(sys.argv[2])
    out = {}
    admin = AdminClient({"bootstrap.servers": bootstrap})
    md = admin.list_topics(timeout=20)
    out["brokers"] = sorted(f"{b.host}:{b.port}" for b in md.brokers.values())
    topic = "compose-" + uuid.uuid4().hex[:8]
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all",
                  "enable.idempotence": True, "message.timeout.ms": 30000})
    errors, acked = [], []
    def report(err, msg):
        (errors if err else acked).append(str(err) if err else msg.offset())
    for i in range(count):
        p.produce(topic, key=b"k%d" % i, value=b"v%d" % i, on_delivery=report)
    left = p.flush(45)
    out.update(acked=len(acked), errors=errors[:5], unflushed=left, topic=topic)
    # Replication: every partition's replicas on 3 brokers, all in sync.
    deadline = time.monotonic() + 30
    while True:
        t = admin.list_topics(topic, timeout=10).topics[topic]
        parts = {p: (sorted(m.replicas), sorted(m.isrs)) for p, m in t.partitions.items()}
        if parts and all(len(r) == 3 and r == i for r, i in parts.values()):
            break
        if time.monotonic() > deadline:
            break
        time.sleep(0.5)
    out["partitions"] = {str(k): v for k, v in parts.items()}
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "compose-" + topic,
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.subscribe([topic])
    got, deadline = set(), time.monotonic() + 40
    while len(got) < count and time.monotonic() < deadline:
        m = c.poll(1.0)
        if m is not None and m.error() is None:
            got.add((m.key().decode(), m.value().decode()))
    c.close()
    out["consumed"] = sorted(got)
    print(json.dumps(out))
    """
)


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


def _client_report(output: str) -> dict:
    """The client's JSON line (librdkafka may log around it)."""
    for line in reversed(output.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise AssertionError(f"the client printed no report:\n{output[-3000:]}")


def test_compose_cluster_runs(strata_binary, rgw, tmp_path, request):
    compose = load_compose()
    services = compose["services"]
    nodes = strata_services(compose)
    bootstrap = readme_bootstrap()
    data_dir = image_env()["STRATA_DATA_DIR"]

    # Network namespaces -> loopback addresses in a random 127.A.B.0/24 block; service
    # names resolve to their namespace's address.
    block = loopback_block()
    owners = sorted({netns_of(compose, name) for name in services})
    address = {owner: f"{block}.{i + 1}" for i, owner in enumerate(owners)}
    node_netns = {netns_of(compose, n) for n in nodes}
    assert len(node_netns) == 1
    shared = address[node_netns.pop()]
    hosts = {name: address[netns_of(compose, name)] for name in services}
    hosts["localhost"] = shared

    # MinIO: radosgw behind the `minio` service's address and port.
    some_node = container_env(next(iter(nodes.values())))
    m = re.fullmatch(r"http://([^:/]+):(\d+)", some_node["STRATA_S3_ENDPOINT"])
    assert m and m.group(1) in services, some_node["STRATA_S3_ENDPOINT"]
    minio_addr = (address[netns_of(compose, m.group(1))], int(m.group(2)))
    rgw_host, rgw_port = re.fullmatch(r"http://([^:/]+):(\d+)", rgw.endpoint).groups()
    # minio-init: the bucket the nodes use is the one `mc mb` creates (made unique here).
    bucket, prefix = bucket_and_prefix(some_node["STRATA_OBJECT_STORE"])
    assert mc_created_bucket(compose) == bucket
    run_bucket = f"{bucket}-{uuid.uuid4().hex[:8]}"
    rgw.s3_client().create_bucket(Bucket=run_bucket)

    base = {k: v for k, v in os.environ.items() if not k.startswith(("STRATA_", "AWS_"))}
    base["NO_COLOR"] = "1"
    sandbox = ComposeSandbox(tmp_path / "sandbox", hosts)
    nodes_running = request.node._strata_brokers = []
    forwarder = Forwarder(minio_addr, (rgw_host, int(rgw_port)))
    try:
        for name, svc in sorted(nodes.items()):
            env = container_env(svc)
            volume = tmp_path / name / "data"  # the service's named volume
            volume.mkdir(parents=True)
            env["STRATA_OBJECT_STORE"] = f"s3://{run_bucket}/{prefix}"
            env["AWS_ACCESS_KEY_ID"] = rgw.access_key
            env["AWS_SECRET_ACCESS_KEY"] = rgw.secret_key
            env["STRATA_S3_REGION"] = rgw.region
            argv = container_argv(svc)
            assert argv[0] == "strata", argv
            nodes_running.append(
                sandbox.start(
                    name,
                    [str(strata_binary), *argv[1:]],
                    {**base, **env},
                    listen_ip=shared,
                    paths={data_dir: volume},
                    cwd=volume,  # the image's WORKDIR
                )
            )

        # Ready: /readyz answers 200 on every node, and each service's own health check
        # (its 127.0.0.1 being the namespace's address here) passes.
        deadline = time.monotonic() + READY_TIMEOUT_S
        pending = {p.name for p in nodes_running}
        while pending:
            for p in nodes_running:
                assert p.running(), f"{p.name} exited with {p.returncode()}:\n{p.log_tail()}"
                port = port_of(container_env(nodes[p.name])["STRATA_HTTP_LISTEN"])
                if p.name in pending and _get(f"http://{shared}:{port}/readyz") == 200:
                    pending.discard(p.name)
            assert time.monotonic() < deadline, f"not ready within {READY_TIMEOUT_S}s: {pending}"
            time.sleep(0.3)
        for name, svc in nodes.items():
            test = svc["healthcheck"]["test"]
            assert test[0] == "CMD", test
            argv = [a.replace("127.0.0.1", shared) for a in test[1:]]
            r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            assert r.returncode == 0, f"{name}'s health check failed: {r.stderr}"

        # A client where the README puts it: its bootstrap address, resolved as on the host.
        count = 50
        code, output = sandbox.run(
            "client", [sys.executable, "-c", CLIENT, bootstrap, str(count)], base, timeout=150
        )
        assert code == 0, f"client failed ({code}):\n{output[-3000:]}"
        out = _client_report(output)
        advertised = sorted(
            container_env(s)["STRATA_ADVERTISED_LISTENER"] for s in nodes.values()
        )
        assert out["brokers"] == advertised, out["brokers"]
        assert out["acked"] == count and not out["errors"] and out["unflushed"] == 0, out
        assert out["partitions"], out
        for p, (replicas, isr) in out["partitions"].items():
            assert len(replicas) == 3 and replicas == isr, f"partition {p}: {replicas} / {isr}"
        assert out["consumed"] == sorted([f"k{i}", f"v{i}"] for i in range(count))

        # The cluster claimed its prefix in the bucket through the `minio` endpoint.
        listed = rgw.s3_client().list_objects_v2(Bucket=run_bucket, Prefix=f"{prefix}/")
        keys = {o["Key"] for o in listed.get("Contents", [])}
        assert f"{prefix}/_strata/cluster-id" in keys, keys

        # `docker compose down`: SIGTERM to every node at once; each exits cleanly within
        # its stop_grace_period.
        grace = min(parse_duration(svc.get("stop_grace_period", "10s")) for svc in nodes.values())
        for p in nodes_running:
            p.proc.send_signal(signal.SIGTERM)
        for p in nodes_running:
            try:
                code = p.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                code = None
            assert code == 0, f"{p.name} exited with {code} after SIGTERM:\n{p.log_tail()}"
    finally:
        sandbox.cleanup()
        forwarder.close()


def parse_duration(value: str) -> float:
    """A compose duration (`60s`, `1m30s`, `500ms`) in seconds."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", str(value))
    assert parts, f"not a duration: {value}"
    return sum(float(n) * units[u] for n, u in parts)
