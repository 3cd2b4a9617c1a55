"""The container image (Dockerfile, .dockerignore), checked without a container engine.

hadolint lints the Dockerfile; a small parser reads its stages and checks what the issue
asks of the image (multi-stage, a release build of `strata` with the lock file, a runtime
stage that runs as the non-root user 10001 with `strata serve` as entrypoint and command
and its data under /var/lib/strata); and the runtime stage's ENV is given to the real
binary with the image's entrypoint and command, which must start with it (Strata refuses
unknown STRATA_* variables) and pass the image's own HEALTHCHECK command once ready.

`dockerfile_stages()` and `image_env()` are also used by test_deploy_compose.py, which
runs compose.yaml's services with the environment the image gives them.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
HADOLINT = REPO / ".venv" / "bin" / "hadolint"
DATA_DIR = "/var/lib/strata"
UID = 10001


@dataclass
class Stage:
    """One FROM ... stage of a Dockerfile: its base, name and instructions in order."""

    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str | None:
        found = self.all(keyword)
        return found[-1] if found else None

    def env(self) -> dict[str, str]:
        """The stage's ENV, in order (later ones win), `K=V` pairs or the old `K V`."""
        env: dict[str, str] = {}
        for args in self.all("ENV"):
            words = shlex.split(args)
            if words and "=" not in words[0]:
                env[words[0]] = args.split(None, 1)[1] if len(words) > 1 else ""
                continue
            for w in words:
                k, _, v = w.partition("=")
                env[k] = v
        return env

    def exec_form(self, keyword: str) -> list[str] | None:
        args = self.last(keyword)
        if args is None:
            return None
        value = json.loads(args)
        assert isinstance(value, list), f"{keyword} should use the exec (JSON) form: {args}"
        return value


def logical_lines(text: str) -> list[str]:
    """Instructions with their continuation lines joined; comments and blanks dropped
    (a comment line inside a continued instruction is skipped, as Docker does)."""
    lines: list[str] = []
    current = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not current):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        if current.strip():
            lines.append(current.strip())
        current = ""
    if current.strip():
        lines.append(current.strip())
    return lines


def dockerfile_stages(path: Path = DOCKERFILE) -> list[Stage]:
    """The stages of a Dockerfile, with global ARG defaults substituted into FROM."""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical_lines(path.read_text()):
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        rest = rest.strip()
        if keyword == "ARG" and not stages:
            k, _, v = rest.partition("=")
            args[k] = v
            continue
        if keyword == "FROM":
            words = rest.split()
            words = [w for w in words if not w.startswith("--platform")]
            base = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m[1] or m[2]], words[0])
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base, name))
            continue
        assert stages, f"instruction before FROM: {line}"
        stages[-1].instructions.append((keyword, rest))
    return stages


def image_env() -> dict[str, str]:
    """The environment the image gives a container (the runtime stage's ENV)."""
    return dockerfile_stages()[-1].env()


def image_argv() -> list[str]:
    """ENTRYPOINT + CMD of the runtime stage."""
    runtime = dockerfile_stages()[-1]
    return (runtime.exec_form("ENTRYPOINT") or []) + (runtime.exec_form("CMD") or [])


def documented_env_vars() -> set[str]:
    """Every STRATA_* variable docs/configuration.md names, the Kafka and strata.*
    settings' variables derived from their names as the document says."""
    doc = (REPO / "docs" / "configuration.md").read_text()
    names = set(re.findall(r"`(STRATA_[A-Z0-9_]+)`", doc))
    # The broker settings' tables (not the topic settings'): every name in a row's first
    # cell ("| `log.retention.minutes`, `log.retention.hours` | ...").
    broker = doc.split("## Kafka broker settings", 1)[1].split("\n## ", 1)[0]
    for row in re.findall(r"^\|([^|]+)\|", broker, re.M):
        for setting in re.findall(r"`([a-z][a-z0-9.\-]+)`", row):
            if setting.startswith("strata."):
                rest = setting[len("strata.") :]
                names.add("STRATA_" + re.sub(r"[.\-]", "_", rest).upper())
            else:
                names.add("STRATA_KAFKA_" + setting.replace(".", "_").upper())
    return names


# --- lint -------------------------------------------------------------------------------


def test_hadolint_clean():
    if not HADOLINT.exists():
        pytest.fail(f"{HADOLINT} is missing: run scripts/install-deploy-tools.sh")
    r = subprocess.run(
        [str(HADOLINT), "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, f"hadolint found problems:\n{r.stdout}{r.stderr}"


# --- structure --------------------------------------------------------------------------


def test_multi_stage_release_build():
    stages = dockerfile_stages()
    assert len(stages) >= 2, "the Dockerfile should build in one stage and run in another"
    builder = stages[0]
    assert builder.base.startswith("rust:") and "bookworm" in builder.base, builder.base
    runs = " ".join(builder.all("RUN"))
    assert "cargo build --release --locked -p strata" in runs, runs
    runtime = stages[-1]
    assert not runtime.base.startswith("rust:"), "the runtime image must not be the toolchain"
    # Same Debian release as the builder, so the glibc the binary was linked against is
    # the one it runs with.
    assert "bookworm" in runtime.base or "debian12" in runtime.base, runtime.base
    copied = runtime.all("COPY")
    assert any(f"--from={builder.name}" in c and "/usr/local/bin/strata" in c for c in copied), (
        f"the runtime stage should copy the binary from the {builder.name} stage: {copied}"
    )
    # rustls verifies S3's certificate against the system roots.
    assert any("ca-certificates.crt" in c for c in copied) or "ca-certificates" in " ".join(
        runtime.all("RUN")
    ), "the runtime stage needs a CA bundle for https S3 endpoints"


def test_runtime_stage_runs_strata_as_non_root():
    runtime = dockerfile_stages()[-1]
    user = runtime.last("USER")
    assert user is not None, "the runtime stage must set USER"
    uid, _, gid = user.partition(":")
    # Numeric, so that Kubernetes' runAsNonRoot can check it without /etc/passwd.
    assert uid == str(UID) and gid in ("", str(UID)), f"USER {user}, want {UID}:{UID}"
    runs = " ".join(runtime.all("RUN"))
    assert f"--uid {UID}" in runs and f"--gid {UID}" in runs, runs
    assert re.search(rf"install -d -o {UID} -g {UID} .*{DATA_DIR}", runs), (
        f"{DATA_DIR} should be created owned by {UID}: {runs}"
    )
    assert runtime.exec_form("ENTRYPOINT") == ["strata"]
    assert runtime.exec_form("CMD") == ["serve"]
    assert runtime.last("WORKDIR") == DATA_DIR


def test_runtime_environment_and_ports():
    runtime = dockerfile_stages()[-1]
    env = runtime.env()
    assert env["STRATA_DATA_DIR"] == DATA_DIR
    assert env["STRATA_KAFKA_LISTEN"] == "0.0.0.0:9092"
    assert env["STRATA_META_LISTEN"] == "0.0.0.0:9093"
    assert env["STRATA_HTTP_LISTEN"] == "0.0.0.0:9644"
    unknown = {k for k in env if k.startswith("STRATA_")} - documented_env_vars()
    assert not unknown, f"not in docs/configuration.md (the broker would refuse them): {unknown}"
    exposed = {p for args in runtime.all("EXPOSE") for p in args.split()}
    assert exposed == {"9092", "9093", "9644"}, exposed


def test_dockerignore_keeps_what_the_build_copies():
    """An allow-list .dockerignore: every COPY source of the build stage is let in, and
    the big local directories (target/, .venv/, .tools/) are kept out."""
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    assert patterns[0] == "*", "the .dockerignore should start by ignoring everything"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    builder = dockerfile_stages()[0]
    for args in builder.all("COPY"):
        words = [w for w in args.split() if not w.startswith("--")]
        for src in words[:-1]:
            assert src.rstrip("/") in allowed, f"COPY {src} but .dockerignore does not let it in"
            assert (REPO / src).exists(), f"COPY {src}: no such path in the repository"
    for big in ("target", ".venv", ".tools", "data"):
        assert big not in allowed


# --- the image's environment on the real binary -----------------------------------------


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def test_image_env_starts_the_broker_and_passes_the_healthcheck(strata_binary, tmp_path):
    """ENTRYPOINT + CMD with exactly the runtime stage's ENV (data directory and listener
    ports moved to the test's own, on 127.0.0.1): the broker starts, and the image's
    HEALTHCHECK command fails before it listens and succeeds once /readyz is 200."""
    runtime = dockerfile_stages()[-1]
    argv = image_argv()
    assert argv[0] == "strata"
    env = runtime.env()
    http_port = _free_port()
    env.update(
        STRATA_DATA_DIR=str(tmp_path / "data"),
        STRATA_KAFKA_LISTEN=f"127.0.0.1:{_free_port()}",
        STRATA_META_LISTEN=f"127.0.0.1:{_free_port()}",
        STRATA_HTTP_LISTEN=f"127.0.0.1:{http_port}",
    )
    base = {k: v for k, v in os.environ.items() if not k.startswith("STRATA_")}
    health = runtime.last("HEALTHCHECK")
    assert health is not None, "the runtime stage should have a HEALTHCHECK"
    check_argv = json.loads(health[health.index("CMD") + 3 :].strip())
    assert shutil.which(check_argv[0]), f"{check_argv[0]} is needed to run the health check"

    def healthy() -> bool:
        r = subprocess.run(check_argv, env={**base, **env}, capture_output=True, timeout=10)
        return r.returncode == 0

    assert not healthy(), "the health check passed with no broker running"
    log = open(tmp_path / "strata.log", "wb")
    proc = subprocess.Popen(
        [str(strata_binary), *argv[1:]],
        env={**base, **env, "NO_COLOR": "1"},
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not healthy():
            assert proc.poll() is None, (
                f"strata exited with {proc.returncode} under the image's environment:\n"
                + (tmp_path / "strata.log").read_text()[-3000:]
            )
            assert time.monotonic() < deadline, "never healthy:\n" + (
                tmp_path / "strata.log"
            ).read_text()[-3000:]
            time.sleep(0.2)
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/readyz", timeout=5) as r:
            assert r.status == 200
        assert (tmp_path / "data").is_dir()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        log.close()
    assert proc.returncode == 0, (tmp_path / "strata.log").read_text()[-3000:]
