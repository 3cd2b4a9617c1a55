"""Fixtures that run a real Strata broker for the end-to-end client tests.

`broker` starts one single-node broker on a fresh temporary data directory with OS-chosen
ports. `broker_factory(env={...})` starts more (or differently configured) ones. Each
`StrataBroker` can be stopped (SIGTERM, exit code checked), killed (SIGKILL) and restarted
on the same data directory and the same Kafka port. Whatever happens, every process is
killed at teardown, and a failing test gets the tail of each broker's log in its report.
`group_members` starts consumer-group members in their own processes (group_helpers).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

# Before anything imports confluent_kafka's client classes (see client_tracking).
from client_tracking import release_clients  # isort: skip
from strata_helpers import file_sizes, partition_dirs

REPO = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 40.0
BINARY_WAIT_S = 90.0
LOG_TAIL_LINES = 80

KAFKA_READY = re.compile(r"kafka listener ready addr=(\d+\.\d+\.\d+\.\d+):(\d+)")
# With Kafka's `listeners` setting, one line per listener, with its name.
NAMED_LISTENER = re.compile(
    r"kafka listener ready addr=(\d+\.\d+\.\d+\.\d+):(\d+) listener=(\w+)"
)
HTTP_READY = re.compile(r"http listener ready addr=(\d+\.\d+\.\d+\.\d+):(\d+)")
META_READY = re.compile(r"metadata listener ready addr=(\d+\.\d+\.\d+\.\d+):(\d+)")


class BrokerStartError(RuntimeError):
    pass


def _locate_binary() -> Path:
    """STRATA_BIN, else <repo>/target/debug/strata.

    The default binary is rebuilt from time to time by other developers, so it may vanish
    for a moment: wait for it a little before failing.
    """
    explicit = os.environ.get("STRATA_BIN")
    path = Path(explicit) if explicit else REPO / "target" / "debug" / "strata"
    deadline = time.monotonic() + (0 if explicit else BINARY_WAIT_S)
    while True:
        if path.is_file() and os.access(path, os.X_OK):
            return path
        if time.monotonic() >= deadline:
            how = "STRATA_BIN" if explicit else "the default location (set STRATA_BIN to override)"
            raise FileNotFoundError(
                f"Strata binary not found or not executable at {path} ({how}); "
                "build it with `cargo build -p strata` first"
            )
        time.sleep(1.0)


@pytest.fixture(scope="session")
def strata_binary(tmp_path_factory) -> Path:
    """A private copy of the broker binary, so a rebuild during the run cannot pull it
    out from under a test that restarts a broker."""
    src = _locate_binary()
    dst = tmp_path_factory.mktemp("bin") / "strata"
    for attempt in range(5):
        try:
            shutil.copy2(src, dst)
            break
        except OSError:
            if attempt == 4:
                raise
            time.sleep(2.0)
            src = _locate_binary()
    return dst


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return "(no log file)"
    return "\n".join(text.splitlines()[-lines:])


class StrataBroker:
    """One broker process (and its restarts) on one data directory.

    `host` is the address its listeners bind to; `args` are more command-line flags;
    `kafka=False` for a node without the broker role (no Kafka listener to wait for).
    `on_listen(kind, port)` is called as soon as the node logs that a listener is up
    ("kafka" or "meta"), before it is ready, so a cluster harness can route to it.
    """

    def __init__(
        self,
        binary: Path,
        root: Path,
        env: dict[str, str] | None = None,
        host: str = "127.0.0.1",
        args: list[str] | None = None,
        kafka: bool = True,
        on_listen=None,
    ):
        self.binary = binary
        self.root = root
        self.data_dir = root / "data"
        self.log_path = root / "strata.log"
        self.extra_env = dict(env or {})
        self.host = host
        self.args = list(args or [])
        self.kafka = kafka
        self.on_listen = on_listen
        self.proc: subprocess.Popen | None = None
        self.kafka_port: int | None = None
        # Port of each named listener (the first is `kafka_port`); with STRATA_KAFKA_LISTENERS
        # in `env` the broker binds those instead of --kafka-listen.
        self.listener_ports: dict[str, int] = {}
        self.http_port: int | None = None
        self.starts = 0
        self._log_file = None
        # Clients a test keeps for this broker across calls (by name); dropped at
        # teardown while the broker still runs, so none outlives it.
        self.clients: dict = {}

    # -- addresses ---------------------------------------------------------------------

    @property
    def bootstrap(self) -> str:
        assert self.kafka_port is not None, "broker not started"
        return f"{self.host}:{self.kafka_port}"

    @property
    def http(self) -> str:
        assert self.http_port is not None, "broker not started"
        return f"http://{self.host}:{self.http_port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> "StrataBroker":
        """Starts the broker; on the same Kafka port as before if it ran already."""
        assert not self.running(), "broker already running"
        kafka_listen = f"{self.host}:{self.kafka_port or 0}"
        # A just-closed port can linger briefly; a restart retries a bind failure.
        attempts = 1 if self.kafka_port is None else 20
        for attempt in range(attempts):
            try:
                self._start_once(kafka_listen)
                return self
            except BrokerStartError as e:
                if attempt + 1 < attempts and "binding the Kafka listener" in str(e):
                    time.sleep(0.5)
                    continue
                raise
        raise AssertionError("unreachable")

    def _start_once(self, kafka_listen: str) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        self._log_file = open(self.log_path, "ab", buffering=0)
        self._log_file.write(f"===== start #{self.starts} ({kafka_listen}) =====\n".encode())
        offset = self._log_file.tell()
        # Settings from the caller's environment must not leak into the broker under test
        # (STRATA_DATA_DIR, STRATA_KAFKA_*, ...); the log level may.
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("STRATA_") or k == "STRATA_LOG_LEVEL"
        }
        env.setdefault("RUST_BACKTRACE", "1")
        env["NO_COLOR"] = "1"
        # The block cache's disk tier is kept free on the data directory's file system
        # (the unuploaded-bytes cap leaves room for it to grow): 256 MiB instead of the
        # default 2 GiB per broker, so that clusters of test brokers produce on a machine
        # with a few GB free. Tests that size the cache set it themselves.
        env["STRATA_TIER_CACHE_DISK_BYTES"] = str(256 << 20)
        env.update(self.extra_env)
        named = "STRATA_KAFKA_LISTENERS" in env
        listeners = len(env.get("STRATA_KAFKA_LISTENERS", "").split(","))
        self.proc = subprocess.Popen(
            [
                str(self.binary),
                "serve",
                "--data-dir",
                str(self.data_dir),
                *([] if named else ["--kafka-listen", kafka_listen]),
                "--http-listen",
                f"{self.host}:0",
                *self.args,
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=self._log_file,
            env=env,
            start_new_session=True,
        )
        deadline = time.monotonic() + READY_TIMEOUT_S
        kafka = http = meta = None
        while time.monotonic() < deadline:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                text = f.read().decode(errors="replace")
            text = re.sub(r"\x1b\[[0-9;]*m", "", text)
            if meta is None and (meta := META_READY.search(text)) and self.on_listen:
                self.on_listen("meta", int(meta.group(2)))
            if kafka is None and (kafka := KAFKA_READY.search(text)) and self.on_listen:
                self.on_listen("kafka", int(kafka.group(2)))
            http = http or HTTP_READY.search(text)
            listening = not named or len(NAMED_LISTENER.findall(text)) >= listeners
            if (kafka or not self.kafka) and http and listening:
                if kafka:
                    self.kafka_port = int(kafka.group(2))
                self.listener_ports = {m[2]: int(m[1]) for m in NAMED_LISTENER.findall(text)}
                self.http_port = int(http.group(2))
                return
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self.proc = None
                self._close_log()
                raise BrokerStartError(
                    f"strata exited with code {code} before it was ready; stderr:\n{text}"
                )
            time.sleep(0.05)
        self._force_kill()
        with open(self.log_path, "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
        raise BrokerStartError(
            f"strata was not ready within {READY_TIMEOUT_S:.0f}s "
            f"(kafka ready: {bool(kafka)}, http ready: {bool(http)}); stderr:\n{text}"
        )

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM, wait, and assert an orderly exit (code 0)."""
        assert self.running(), "broker is not running"
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._force_kill()
            raise AssertionError(
                f"strata did not exit within {timeout}s of SIGTERM; log tail:\n{_tail(self.log_path)}"
            )
        self.proc = None
        self._close_log()
        assert code == 0, f"strata exited with {code} after SIGTERM; log tail:\n{_tail(self.log_path)}"
        return code

    def kill(self) -> None:
        """SIGKILL: no chance to sync or clean up."""
        assert self.running(), "broker is not running"
        self._force_kill()

    def restart(self) -> "StrataBroker":
        """Starts again on the same data directory and Kafka port (stop or kill first)."""
        if self.running():
            self.stop()
        return self.start()

    def _force_kill(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(timeout=30)
            self.proc = None
        self._close_log()

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def cleanup(self) -> None:
        self._force_kill()

    # -- HTTP --------------------------------------------------------------------------

    def http_get(self, path: str, timeout: float = 10.0) -> tuple[int, str]:
        """GET on the HTTP port, with the admin token the broker was given, if any."""
        req = urllib.request.Request(self.http + path)
        if token := self.extra_env.get("STRATA_HTTP_ADMIN_TOKEN"):
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(errors="replace")

    def metrics(self) -> str:
        status, body = self.http_get("/metrics")
        assert status == 200, f"/metrics answered {status}: {body[:500]}"
        return body

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return _tail(self.log_path, lines)

    def partition_dir_size(self, topic: str, partition: int) -> int:
        """Bytes on disk under the directory (or directories) that hold one partition."""
        dirs = partition_dirs(self.data_dir, topic, partition)
        assert dirs, (
            f"no directory for {topic}-{partition} under {self.data_dir}: "
            f"{sorted(str(p.relative_to(self.data_dir)) for p in self.data_dir.rglob('*'))[:50]}"
        )
        return sum(sum(file_sizes(d, recursive=True).values()) for d in dirs)


@pytest.fixture
def broker_factory(strata_binary, tmp_path, request):
    """Starts brokers: `broker_factory(env={"STRATA_KAFKA_...": "..."})`."""
    brokers: list[StrataBroker] = []
    request.node._strata_brokers = brokers

    def make(env: dict[str, str] | None = None, start: bool = True) -> StrataBroker:
        root = tmp_path / f"broker{len(brokers)}"
        root.mkdir()
        b = StrataBroker(strata_binary, root, env)
        brokers.append(b)
        if start:
            b.start()
        return b

    yield make
    try:
        for b in brokers:
            b.clients.clear()
        release_clients()
    finally:
        for b in brokers:
            b.cleanup()


@pytest.fixture
def cluster_factory(strata_binary, tmp_path, request):
    """`cluster_factory(roles=[...], env={...}, racks=[...])` starts a cluster of real
    processes (cluster.Cluster; 3 combined nodes by default). Workloads are stopped and
    every process killed at teardown; a failing test gets each node's log tail."""
    from cluster import Cluster

    clusters: list = []
    tails = request.node._strata_brokers = []

    def make(roles=None, env=None, racks=None, client_conf=None):
        root = tmp_path / f"cluster{len(clusters)}"
        c = Cluster(strata_binary, root, roles or ["broker,meta"] * 3, env, racks, client_conf)
        clusters.append(c)
        tails.extend(n.process for n in c.nodes.values())
        return c.start()

    yield make
    try:
        for c in clusters:
            c.stop_workloads()
        release_clients()
    finally:
        for c in clusters:
            c.cleanup()


CLUSTER_PARAM = "3-node-cluster"


def pytest_generate_tests(metafunc):
    """Tests marked `also_on_cluster` run twice: against one broker, and against a
    3-node cluster (topics of replication factor 3) standing in for it."""
    if metafunc.definition.get_closest_marker("also_on_cluster") is None:
        return
    for name in ("broker", "kbroker"):
        if name in metafunc.fixturenames:
            metafunc.parametrize(name, ["single", CLUSTER_PARAM], indirect=True)


def broker_or_cluster(request, broker_factory, env: dict[str, str] | None = None):
    if getattr(request, "param", "single") == CLUSTER_PARAM:
        from cluster import ClusterBroker

        return ClusterBroker(request.getfixturevalue("cluster_factory")(env=env))
    return broker_factory(env=env)


@pytest.fixture
def broker(broker_factory, request):
    return broker_or_cluster(request, broker_factory)


@pytest.fixture
def group_members(tmp_path, request):
    """Consumer-group members in their own processes (see group_helpers.Members):
    `group_members.spawn("confluent", broker, group, topic, "range")`. Every process is
    killed at teardown; a failing test gets each member's report and stderr tail."""
    from group_helpers import Members

    members = Members(tmp_path)
    request.node._strata_members = members
    yield members
    members.cleanup()


def pytest_sessionfinish(session, exitstatus):
    # Clients a test kept alive past its brokers (a failing test's frames hold them):
    # close them now rather than at interpreter exit, after the summary.
    release_clients()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for i, b in enumerate(getattr(item, "_strata_brokers", [])):
            report.sections.append(
                (f"strata broker {i} log tail ({b.log_path})", b.log_tail())
            )
        members = getattr(item, "_strata_members", None)
        for m in members.all if members else []:
            report.sections.append(
                (f"group member {m.name} ({m.stderr_path})", m.summary() + "\n" + m.stderr_tail())
            )


# --- Ceph radosgw: a real S3 server for tiered-storage tests (scripts/rgw.sh) -------------

RGW_SCRIPT = REPO / "scripts" / "rgw.sh"
RGW_START_TIMEOUT_S = 120.0


class RadosGateway:
    """A throw-away single-node Ceph cluster with radosgw, run by scripts/rgw.sh in `root`.

    After `start()`: `endpoint` (http://127.0.0.1:PORT), `access_key`, `secret_key`,
    `region`, `env()` (the variables `rgw.sh start` prints). `pause()`/`resume()` (or
    `with gw.outage(): ...`) simulate an object-store outage; `stop()` is idempotent.
    """

    def __init__(self, root: Path):
        self.root = root
        self.endpoint: str | None = None
        self.access_key: str | None = None
        self.secret_key: str | None = None
        self.region: str | None = None
        self.paused = False

    def _run(self, *args: str, env: dict[str, str] | None = None, timeout: float = 60.0):
        return subprocess.run(
            ["bash", str(RGW_SCRIPT), *args, str(self.root)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **(env or {})},
        )

    def start(self) -> "RadosGateway":
        if shutil.which("radosgw") is None:
            raise FileNotFoundError(
                "radosgw is not installed: run scripts/install-test-deps.sh "
                "(Debian packages radosgw ceph-mon ceph-osd)"
            )
        r = self._run("start", timeout=RGW_START_TIMEOUT_S)
        if r.returncode != 0:
            raise RuntimeError(f"scripts/rgw.sh start failed ({r.returncode}):\n{r.stderr}")
        values = dict(line.split("=", 1) for line in r.stdout.splitlines() if "=" in line)
        self.endpoint = values["RGW_ENDPOINT"]
        self.access_key = values["AWS_ACCESS_KEY_ID"]
        self.secret_key = values["AWS_SECRET_ACCESS_KEY"]
        self.region = values["AWS_REGION"]
        return self

    def env(self) -> dict[str, str]:
        """The variables `rgw.sh start` prints, e.g. for a broker or the `aws` CLI."""
        assert self.endpoint, "radosgw not started"
        return {
            "RGW_ENDPOINT": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
        }

    def pause(self, mode: str | None = None) -> None:
        """Makes the S3 endpoint unavailable. mode "stop" (default): radosgw is SIGSTOPped,
        connections are accepted but nothing answers (clients time out; requests sent
        meanwhile are executed after resume). mode "restart": radosgw is stopped (clients
        get connection refused) and resume() starts it again on the same port."""
        r = self._run("pause", env={"RGW_PAUSE_MODE": mode} if mode else None)
        assert r.returncode == 0, f"rgw.sh pause failed:\n{r.stderr}"
        self.paused = True

    def resume(self) -> None:
        r = self._run("resume", timeout=RGW_START_TIMEOUT_S)
        assert r.returncode == 0, f"rgw.sh resume failed:\n{r.stderr}"
        self.paused = False

    def outage(self, mode: str | None = None) -> "_RgwOutage":
        """`with rgw.outage(): ...` pauses radosgw for the block, resumes it after."""
        return _RgwOutage(self, mode)

    def stop(self) -> None:
        r = self._run("stop")
        assert r.returncode == 0, f"rgw.sh stop failed:\n{r.stderr}"
        self.paused = False

    def s3_client(self, **config):
        """A boto3 S3 client for this gateway (path-style addressing); keyword arguments
        go to botocore's Config, e.g. connect_timeout=2, retries={"total_max_attempts": 1}."""
        import boto3
        from botocore.config import Config

        assert self.endpoint, "radosgw not started"
        config.setdefault("s3", {"addressing_style": "path"})
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=Config(**config),
        )

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return "\n\n".join(
            f"--- {p.name}\n{_tail(p, lines)}" for p in sorted((self.root / "log").glob("*.log"))
        )


class _RgwOutage:
    def __init__(self, gw: RadosGateway, mode: str | None):
        self.gw, self.mode = gw, mode

    def __enter__(self) -> RadosGateway:
        self.gw.pause(self.mode)
        return self.gw

    def __exit__(self, *exc) -> None:
        self.gw.resume()


@pytest.fixture(scope="session")
def rgw(tmp_path_factory):
    """One radosgw (real S3 server) for the whole session; stopped at the end. Tests share
    it: use unique bucket names, and resume it if you pause it (or use `rgw.outage()`)."""
    gw = RadosGateway(tmp_path_factory.mktemp("rgw"))
    try:
        yield gw.start()
    finally:
        gw.stop()


@pytest.fixture
def rgw_factory(tmp_path):
    """Starts private radosgw instances (`rgw_factory()`), e.g. for a test that stops one;
    all are stopped at teardown."""
    gateways: list[RadosGateway] = []

    def make() -> RadosGateway:
        gw = RadosGateway(tmp_path / f"rgw{len(gateways)}")
        gateways.append(gw)
        return gw.start()

    yield make
    for gw in gateways:
        gw.stop()
