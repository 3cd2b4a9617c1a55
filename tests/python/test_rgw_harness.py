"""The S3 test harness itself: scripts/rgw.sh runs a real Ceph radosgw, and the `rgw`
fixture (conftest.py) hands it to tests. Checks that S3 works against it (buckets,
objects, an atomic conditional put), that pause/resume makes it fail and recover, and
that stop leaves no daemon behind."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

SHORT = dict(connect_timeout=2, read_timeout=2, retries={"total_max_attempts": 1})


def _procs_using(conf: Path) -> list[str]:
    """Live processes whose command line names this cluster's ceph.conf."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmdline = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(conf) in cmdline:
            found.append(f"{d.name}: {cmdline}")
    return found


def _fails_fast(s3, bucket: str, key: str) -> str:
    t0 = time.monotonic()
    with pytest.raises((BotoCoreError, ClientError)) as e:
        s3.head_object(Bucket=bucket, Key=key)
    took = time.monotonic() - t0
    if isinstance(e.value, ClientError):  # a gateway error is fine, but not a 4xx
        assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] >= 500, e.value
    assert took < 10, f"the failure took {took:.1f}s"
    return type(e.value).__name__


def test_s3_on_radosgw_pause_resume_and_stop(rgw_factory):
    gw = rgw_factory()
    assert gw.endpoint.startswith("http://127.0.0.1:")
    assert (gw.access_key, gw.secret_key, gw.region) == ("strata", "strata-secret", "us-east-1")
    env_file = (gw.root / "env").read_text().splitlines()
    assert env_file == [f"{k}={v}" for k, v in gw.env().items()]

    s3 = gw.s3_client()
    bucket = "harness"
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="dir/a", Body=b"hello")
    assert s3.get_object(Bucket=bucket, Key="dir/a")["Body"].read() == b"hello"
    listed = s3.list_objects_v2(Bucket=bucket, Prefix="dir/")
    assert [o["Key"] for o in listed["Contents"]] == ["dir/a"]

    # A conditional create of an existing key fails, and leaves the object alone.
    with pytest.raises(ClientError) as e:
        s3.put_object(Bucket=bucket, Key="dir/a", Body=b"other", IfNoneMatch="*")
    assert e.value.response["Error"]["Code"] == "PreconditionFailed"
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    assert s3.get_object(Bucket=bucket, Key="dir/a")["Body"].read() == b"hello"
    s3.put_object(Bucket=bucket, Key="dir/b", Body=b"new", IfNoneMatch="*")

    # Signatures are checked.
    bad = boto3.client(
        "s3",
        endpoint_url=gw.endpoint,
        aws_access_key_id=gw.access_key,
        aws_secret_access_key="wrong",
        region_name=gw.region,
        config=Config(s3={"addressing_style": "path"}),
    )
    with pytest.raises(ClientError) as e:
        bad.list_buckets()
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403

    s3.delete_object(Bucket=bucket, Key="dir/a")
    s3.delete_object(Bucket=bucket, Key="dir/b")
    assert s3.list_objects_v2(Bucket=bucket).get("KeyCount") == 0
    s3.put_object(Bucket=bucket, Key="probe", Body=b"p")

    # Outage: both pause modes make requests fail quickly, and resume brings S3 back.
    short = gw.s3_client(**SHORT)
    for mode in ("stop", "restart"):
        gw.pause(mode)
        try:
            failure = _fails_fast(short, bucket, "probe")
            if mode == "restart":  # nothing listens: refused (or a pooled connection closed)
                assert failure in ("EndpointConnectionError", "ConnectionClosedError"), failure
        finally:
            gw.resume()
        assert short.head_object(Bucket=bucket, Key="probe")["ContentLength"] == 1
        assert s3.get_object(Bucket=bucket, Key="probe")["Body"].read() == b"p"

    pids = [int((gw.root / "run" / f"{n}.pid").read_text()) for n in ("mon", "osd", "radosgw")]
    assert _procs_using(gw.root / "ceph.conf"), "expected the daemons to be running"
    gw.stop()
    assert _procs_using(gw.root / "ceph.conf") == []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split()[2]
        except FileNotFoundError:
            continue
        assert state == "Z", f"pid {pid} still alive after stop (state {state})"
    gw.stop()  # idempotent


def test_shared_rgw_fixture_and_aws_cli(rgw):
    bucket = f"shared-{uuid.uuid4().hex[:12]}"
    s3 = rgw.s3_client()
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="k", Body=b"v")

    aws = Path(sys.executable).parent / "aws"
    out = subprocess.run(
        [str(aws), "--endpoint-url", rgw.endpoint, "s3", "ls", f"s3://{bucket}/"],
        env={**os.environ, **rgw.env()},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-1] == "k", out.stdout

    with rgw.outage():
        _fails_fast(rgw.s3_client(**SHORT), bucket, "k")
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"v"


def test_rgw_sh_bucket_creates_a_bucket_a_broker_can_use(rgw, strata_binary, tmp_path):
    """`scripts/rgw.sh bucket DIR NAME` (what the README shows) makes a bucket that S3
    clients and a broker see; running it again is fine."""
    name = f"made-{uuid.uuid4().hex[:8]}"
    script = Path(__file__).resolve().parents[2] / "scripts" / "rgw.sh"
    for _ in range(2):
        r = subprocess.run(["bash", str(script), "bucket", str(rgw.root), name],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert f"bucket {name} ready" in r.stderr
    rgw.s3_client().head_bucket(Bucket=name)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("STRATA_", "AWS_"))}
    env = {**base, **rgw.env(), "STRATA_S3_ENDPOINT": rgw.endpoint, "STRATA_S3_ALLOW_HTTP": "true",
           "STRATA_OBJECT_STORE": f"s3://{name}/p"}
    proc = subprocess.Popen(
        [str(strata_binary), "serve", "--data-dir", str(tmp_path / "d"), "--kafka-listen",
         "127.0.0.1:0", "--http-listen", "127.0.0.1:0"],
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        seen = ""
        while "kafka listener ready" not in seen:
            assert time.monotonic() < deadline and proc.poll() is None, seen[-3000:]
            seen += proc.stdout.readline()
    finally:
        proc.terminate()
        proc.wait(timeout=40)
