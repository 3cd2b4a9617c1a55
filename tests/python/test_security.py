"""TLS and SASL end to end: real clients (confluent-kafka and kcat on librdkafka,
kafka-python, KafkaJS) against a broker with Kafka's `listeners` settings, a PEM
keystore made by the test's own CA, and SCRAM users from `scram.bootstrap`.

One broker serves four listeners: PLAINTEXT, SSL (client certificates required: mTLS),
SASL_PLAINTEXT and SASL_SSL. Refused clients (wrong password, unknown user, untrusted
certificate, plaintext on the TLS port, requests before authenticating) must be refused
in the way Kafka refuses them and leave the broker serving everyone else.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import shutil
import socket
import ssl
import struct
import subprocess
import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import (
    AdminClient,
    ConfigResource,
    ResourceType,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialDeletion,
    UserScramCredentialUpsertion,
)
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from group_helpers import NODE_DIR
from strata_helpers import metric_values, unique, wait_until

KCAT = shutil.which("kcat") or "kcat"
ADMIN_PASSWORD = "admin-secret-7f3a"
ALICE_PASSWORD = "alice-secret-91c2"
COUNT = 5

# --- a private PKI --------------------------------------------------------------------


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Strata Tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _pem_key(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _pem_cert(cert) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


class CA:
    def __init__(self, cn: str):
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(_name(cn))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self.key, hashes.SHA256())
        )

    def issue(self, cn: str, server: bool) -> tuple[bytes, bytes, int]:
        """(key PEM, certificate PEM, serial) of a leaf for a server (127.0.0.1, the
        cluster harness's node addresses and localhost; usable as a client too, as a
        broker's certificate is towards its peers) or a client."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        serial = x509.random_serial_number()
        b = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                    if server
                    else [ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
        )
        if server:
            b = b.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost")]
                    # 127.0.0.1 and the cluster harness's node addresses (127.0.0.11...),
                    # as IP addresses and, for librdkafka's host name check, as names.
                    + [
                        san
                        for last in [1, *range(11, 20)]
                        for san in (
                            x509.DNSName(f"127.0.0.{last}"),
                            x509.IPAddress(ipaddress.ip_address(f"127.0.0.{last}")),
                        )
                    ]
                ),
                critical=False,
            )
        cert = b.sign(self.key, hashes.SHA256())
        return _pem_key(key), _pem_cert(cert), serial


class Pki:
    """The CA, the broker's keystore, a trusted client and an untrusted one."""

    def __init__(self, root: Path):
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.ca = CA("Strata Test CA")
        self.ca_pem = root / "ca.pem"
        self.ca_pem.write_bytes(_pem_cert(self.ca.cert))
        self.keystore = root / "server.pem"
        self.server_serial = self.rotate()
        self.client_key, self.client_cert = self._client(self.ca, "alice-client")
        self.rogue_key, self.rogue_cert = self._client(CA("Rogue CA"), "mallory")

    def rotate(self) -> int:
        """Writes a new server certificate into the keystore the way cert-manager does
        (a new file moved into place); returns its serial."""
        key, cert, serial = self.ca.issue("strata-broker", server=True)
        tmp = self.keystore.with_suffix(".new")
        tmp.write_bytes(key + cert + _pem_cert(self.ca.cert))
        tmp.replace(self.keystore)
        return serial

    def _client(self, ca: CA, cn: str) -> tuple[Path, Path]:
        key, cert, _ = ca.issue(cn, server=False)
        k, c = self.root / f"{cn}-key.pem", self.root / f"{cn}.pem"
        k.write_bytes(key)
        c.write_bytes(cert)
        return k, c

    def served_serial(self, port: int, host: str = "127.0.0.1") -> int:
        """Serial of the certificate a new TLS connection to `host:port` is given."""
        ctx = ssl.create_default_context(cafile=str(self.ca_pem))
        ctx.load_cert_chain(str(self.client_cert), str(self.client_key))
        with socket.create_connection((host, port), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                der = tls.getpeercert(binary_form=True)
        return x509.load_der_x509_certificate(der).serial_number


# --- the broker ----------------------------------------------------------------------

LISTENERS = "PLAIN://127.0.0.1:0,TLS://127.0.0.1:0,SASL://127.0.0.1:0,SASLTLS://127.0.0.1:0"


def secure_env(pki: Pki, **extra: str) -> dict[str, str]:
    env = {
        "STRATA_KAFKA_LISTENERS": LISTENERS,
        "STRATA_KAFKA_LISTENER_SECURITY_PROTOCOL_MAP": "PLAIN:PLAINTEXT,TLS:SSL,SASL:SASL_PLAINTEXT,SASLTLS:SASL_SSL",
        "STRATA_KAFKA_INTER_BROKER_LISTENER_NAME": "PLAIN",
        "STRATA_KAFKA_SSL_KEYSTORE_LOCATION": str(pki.keystore),
        "STRATA_KAFKA_SSL_TRUSTSTORE_LOCATION": str(pki.ca_pem),
        "STRATA_KAFKA_SSL_CLIENT_AUTH": "required",
        "STRATA_SSL_RELOAD_INTERVAL_MS": "200",
        "STRATA_SCRAM_BOOTSTRAP": (
            f"SCRAM-SHA-512=[name=admin,password={ADMIN_PASSWORD}],"
            f"SCRAM-SHA-256=[name=alice,password={ALICE_PASSWORD},iterations=8192]"
        ),
    }
    env.update(extra)
    return env


@pytest.fixture
def pki(tmp_path) -> Pki:
    return Pki(tmp_path / "pki")


@pytest.fixture
def secure(broker_factory, pki):
    b = broker_factory(env=secure_env(pki))
    assert set(b.listener_ports) == {"PLAIN", "TLS", "SASL", "SASLTLS"}, b.listener_ports
    return b


def addr(b, listener: str) -> str:
    return f"127.0.0.1:{b.listener_ports[listener]}"


def librdkafka_conf(b, pki: Pki, listener: str, user: str | None = None, password: str | None = None,
                    mechanism: str = "SCRAM-SHA-512", client_cert: bool = True) -> dict:
    """Client settings for one listener, by Kafka's (librdkafka's) names."""
    conf: dict = {"bootstrap.servers": addr(b, listener)}
    protocol = {"PLAIN": "PLAINTEXT", "TLS": "SSL", "SASL": "SASL_PLAINTEXT", "SASLTLS": "SASL_SSL"}[listener]
    conf["security.protocol"] = protocol
    if "SSL" in protocol:
        conf["ssl.ca.location"] = str(pki.ca_pem)
        if protocol == "SSL" and client_cert:
            conf["ssl.certificate.location"] = str(pki.client_cert)
            conf["ssl.key.location"] = str(pki.client_key)
    if "SASL" in protocol:
        conf.update({"sasl.mechanism": mechanism, "sasl.username": user, "sasl.password": password})
    return conf


def confluent_roundtrip(conf: dict, topic: str, count: int = COUNT) -> list[str]:
    """Produces `count` values with confluent-kafka and reads them back."""
    errors: list = []
    p = Producer({**conf, "error_cb": errors.append, "message.timeout.ms": 20000})
    sent = [f"{topic}-{i}" for i in range(count)]
    delivered: list = []
    for v in sent:
        p.produce(topic, v.encode(), on_delivery=lambda err, msg: delivered.append(err))
    assert p.flush(30) == 0, f"undelivered messages; client errors: {errors}"
    assert delivered == [None] * count, f"delivery errors: {delivered}; client errors: {errors}"
    c = Consumer({**conf, "group.id": unique("g"), "enable.auto.commit": False,
                  "auto.offset.reset": "earliest", "error_cb": errors.append})
    try:
        c.assign([TopicPartition(topic, 0, 0)])
        got: list[str] = []
        deadline = time.monotonic() + 30
        while len(got) < count and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is not None and m.error() is None:
                got.append(m.value().decode())
        assert got == sent, f"read {got}; client errors: {errors}"
        return got
    finally:
        c.close()


def auth_error(conf: dict, timeout: float = 20) -> KafkaError:
    """The first error a producer with `conf` reports (it must report one)."""
    errors: list[KafkaError] = []
    p = Producer({**conf, "error_cb": errors.append})
    deadline = time.monotonic() + timeout
    while not errors and time.monotonic() < deadline:
        p.poll(0.2)
    assert errors, "the client reported no error"
    return errors[0]


def metric(b, name: str, **labels: str) -> float:
    return sum(metric_values(b.metrics(), name, **labels))


# --- tests ---------------------------------------------------------------------------


def test_confluent_kafka_over_ssl_and_every_sasl_mechanism(secure, pki):
    """mTLS on the SSL listener; PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512 over SASL_SSL and
    SASL_PLAINTEXT. Every successful SASL login is counted by mechanism."""
    confluent_roundtrip(librdkafka_conf(secure, pki, "TLS"), unique("ssl"))
    cases = [
        ("SASLTLS", "SCRAM-SHA-512", "admin", ADMIN_PASSWORD),
        ("SASLTLS", "SCRAM-SHA-256", "alice", ALICE_PASSWORD),
        ("SASLTLS", "PLAIN", "alice", ALICE_PASSWORD),
        ("SASL", "SCRAM-SHA-256", "alice", ALICE_PASSWORD),
        ("SASL", "PLAIN", "admin", ADMIN_PASSWORD),
    ]
    for listener, mechanism, user, password in cases:
        conf = librdkafka_conf(secure, pki, listener, user, password, mechanism)
        confluent_roundtrip(conf, unique(f"{listener.lower()}-{mechanism.lower()}"))
    for mechanism in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
        assert metric(secure, "strata_kafka_authentications_total", mechanism=mechanism, result="success") >= 1
    assert metric(secure, "strata_kafka_authentications_total", result="failure") == 0
    # Passwords never reach the log.
    log = secure.log_text()
    assert ADMIN_PASSWORD not in log and ALICE_PASSWORD not in log


def test_large_batches_are_copied_over_tls_and_sent_from_the_files_over_sasl_plaintext(broker_factory, pki):
    """A TLS connection must encrypt what it sends, so its record bytes are read into the
    broker (never sendfile); a SASL_PLAINTEXT connection gets large batches straight from
    the segment files. Both read every value as produced."""
    b = broker_factory(env=secure_env(pki, STRATA_WAL_CACHE_BYTES="0"))
    topic = unique("files")
    values = [bytes([i % 251]) * 3000 + str(i).encode() for i in range(2000)]
    admin_conf = librdkafka_conf(b, pki, "SASL", "admin", ADMIN_PASSWORD)
    p = Producer({**admin_conf, "linger.ms": 200, "batch.size": 1_000_000})
    for v in values:
        p.produce(topic, v, partition=0)
    assert p.flush(30) == 0

    def read_all(conf: dict) -> tuple[float, float]:
        """Reads the topic through `conf`; the fetched and sendfile bytes it cost."""
        before = b.metrics()
        c = Consumer({**conf, "group.id": unique("g"), "enable.auto.commit": False})
        try:
            c.assign([TopicPartition(topic, 0, 0)])
            got: list[bytes] = []
            deadline = time.monotonic() + 30
            while len(got) < len(values) and time.monotonic() < deadline:
                m = c.poll(0.5)
                if m is not None and m.error() is None:
                    got.append(m.value())
            assert got == values, f"{len(got)} values read, {len(values)} produced (or they differ)"
        finally:
            c.close()
        after = b.metrics()
        return tuple(
            sum(metric_values(after, n)) - sum(metric_values(before, n))
            for n in ("strata_kafka_fetch_bytes_total", "strata_kafka_fetch_sendfile_bytes_total")
        )

    fetched, sent = read_all(librdkafka_conf(b, pki, "TLS"))
    assert fetched > 5_000_000 and sent == 0, (fetched, sent)
    fetched, sent = read_all(admin_conf)
    assert fetched > 5_000_000 and sent > 0.5 * fetched, (fetched, sent)


def test_refused_clients_get_kafkas_errors_and_others_keep_working(secure, pki):
    """Wrong password, unknown user, a mechanism that is not enabled, a client certificate
    from another CA, none at all, plaintext on the TLS port, and a request before
    authenticating: each is refused; the broker serves a good client afterwards."""
    wrong = auth_error(librdkafka_conf(secure, pki, "SASLTLS", "alice", "wrong", "SCRAM-SHA-256"))
    assert wrong.code() == KafkaError._AUTHENTICATION, wrong
    assert "invalid credentials" in wrong.str(), wrong
    unknown = auth_error(librdkafka_conf(secure, pki, "SASL", "nobody", "x", "PLAIN"))
    assert unknown.code() == KafkaError._AUTHENTICATION, unknown
    assert metric(secure, "strata_kafka_authentications_total", result="failure") >= 2

    handshakes = metric(secure, "strata_kafka_connection_errors_total", reason="tls_handshake_failed")
    rogue = librdkafka_conf(secure, pki, "TLS", client_cert=False)
    rogue.update({"ssl.certificate.location": str(pki.rogue_cert), "ssl.key.location": str(pki.rogue_key)})
    auth_error(rogue)
    auth_error(librdkafka_conf(secure, pki, "TLS", client_cert=False))
    plaintext_on_tls = {"bootstrap.servers": addr(secure, "TLS"), "security.protocol": "PLAINTEXT"}
    auth_error(plaintext_on_tls)
    wait_until(
        lambda: metric(secure, "strata_kafka_connection_errors_total", reason="tls_handshake_failed")
        >= handshakes + 3,
        15,
        "three refused TLS handshakes counted",
    )

    # A Metadata request (v0) on the SASL listener before any authentication: closed.
    with socket.create_connection(("127.0.0.1", secure.listener_ports["SASL"]), timeout=10) as s:
        body = struct.pack(">hhih", 3, 0, 7, -1) + struct.pack(">i", 0)
        s.sendall(struct.pack(">i", len(body)) + body)
        assert s.recv(4) == b"", "the broker answered an unauthenticated request"
    assert metric(secure, "strata_kafka_connection_errors_total", reason="unauthenticated_request") >= 1

    confluent_roundtrip(librdkafka_conf(secure, pki, "SASLTLS", "admin", ADMIN_PASSWORD), unique("after"))
    confluent_roundtrip(librdkafka_conf(secure, pki, "PLAIN"), unique("plain"))


def test_scram_users_are_managed_with_the_admin_api(secure, pki):
    """AlterUserScramCredentials creates a user that can log in with SCRAM and PLAIN at
    once, DescribeUserScramCredentials lists it without secrets, deleting it locks it
    out; DescribeConfigs never shows scram.bootstrap."""
    admin = AdminClient(librdkafka_conf(secure, pki, "SASLTLS", "admin", ADMIN_PASSWORD))
    futures = admin.alter_user_scram_credentials(
        [UserScramCredentialUpsertion("carol", ScramCredentialInfo(ScramMechanism.SCRAM_SHA_256, 4096), b"carol-pw")]
    )
    futures["carol"].result(timeout=20)
    described = admin.describe_user_scram_credentials(["carol", "alice"])
    carol = described["carol"].result(timeout=20)
    assert [(i.mechanism, i.iterations) for i in carol.scram_credential_infos] == [(ScramMechanism.SCRAM_SHA_256, 4096)]
    alice = described["alice"].result(timeout=20)
    assert [(i.mechanism, i.iterations) for i in alice.scram_credential_infos] == [(ScramMechanism.SCRAM_SHA_256, 8192)]
    with pytest.raises(Exception) as missing:
        admin.describe_user_scram_credentials(["nobody"])["nobody"].result(timeout=20)
    assert "RESOURCE_NOT_FOUND" in str(missing.value) or "nonexistent" in str(missing.value), missing.value

    confluent_roundtrip(librdkafka_conf(secure, pki, "SASLTLS", "carol", "carol-pw", "SCRAM-SHA-256"), unique("carol"))
    confluent_roundtrip(librdkafka_conf(secure, pki, "SASL", "carol", "carol-pw", "PLAIN"), unique("carol-plain"))

    admin.alter_user_scram_credentials([UserScramCredentialDeletion("carol", ScramMechanism.SCRAM_SHA_256)])["carol"].result(timeout=20)
    err = auth_error(librdkafka_conf(secure, pki, "SASLTLS", "carol", "carol-pw", "SCRAM-SHA-256"))
    assert err.code() == KafkaError._AUTHENTICATION, err

    res = ConfigResource(ResourceType.BROKER, "0")
    entries = admin.describe_configs([res])[res].result(timeout=20)
    boot = entries["strata.scram.bootstrap"]
    assert boot.is_sensitive and boot.value is None, boot
    assert entries["listeners"].value == LISTENERS


def test_kcat_kafka_python_and_kafkajs_over_tls_and_sasl(secure, pki):
    """The other client libraries: kcat (SASL_SSL with SCRAM-SHA-256, SCRAM-SHA-512 and
    PLAIN, SSL with a client certificate), kafka-python (SASL_SSL SCRAM-SHA-512,
    SASL_PLAINTEXT PLAIN, SSL with a client certificate) and KafkaJS (SASL_SSL
    SCRAM-SHA-512 and PLAIN, SSL with a client certificate)."""
    # kcat
    def sasl(mechanism: str, user: str, password: str) -> list[str]:
        return ["-X", f"sasl.mechanisms={mechanism}", "-X", f"sasl.username={user}", "-X", f"sasl.password={password}"]

    for listener, extra in [
        ("SASLTLS", sasl("SCRAM-SHA-256", "alice", ALICE_PASSWORD)),
        ("SASLTLS", sasl("SCRAM-SHA-512", "admin", ADMIN_PASSWORD)),
        ("SASLTLS", sasl("PLAIN", "alice", ALICE_PASSWORD)),
        ("TLS", ["-X", f"ssl.certificate.location={pki.client_cert}", "-X", f"ssl.key.location={pki.client_key}"]),
    ]:
        topic = unique(f"kcat-{listener.lower()}")
        base = [KCAT, "-b", addr(secure, listener), "-X", f"security.protocol={'SASL_SSL' if listener == 'SASLTLS' else 'SSL'}",
                "-X", f"ssl.ca.location={pki.ca_pem}", *extra]
        lines = "\n".join(f"{topic}-{i}" for i in range(COUNT)) + "\n"
        r = subprocess.run([*base, "-P", "-t", topic], input=lines, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr[-2000:]
        r = subprocess.run([*base, "-C", "-t", topic, "-p", "0", "-o", "beginning", "-e", "-q"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr[-2000:]
        assert r.stdout.split() == [f"{topic}-{i}" for i in range(COUNT)], r.stdout

    # kafka-python
    from kafka import KafkaConsumer, KafkaProducer
    from kafka import TopicPartition as KTP

    for name, kw in [
        ("scram", dict(security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512",
                       sasl_plain_username="admin", sasl_plain_password=ADMIN_PASSWORD, ssl_cafile=str(pki.ca_pem)),
         ),
        ("plain", dict(security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN",
                       sasl_plain_username="alice", sasl_plain_password=ALICE_PASSWORD)),
        ("ssl", dict(security_protocol="SSL", ssl_cafile=str(pki.ca_pem), ssl_certfile=str(pki.client_cert),
                     ssl_keyfile=str(pki.client_key))),
    ]:
        listener = {"SASL_SSL": "SASLTLS", "SASL_PLAINTEXT": "SASL", "SSL": "TLS"}[kw["security_protocol"]]
        topic = unique(f"kpy-{name}")
        p = KafkaProducer(bootstrap_servers=addr(secure, listener), **kw)
        for i in range(COUNT):
            p.send(topic, f"{topic}-{i}".encode()).get(timeout=30)
        p.close()
        c = KafkaConsumer(bootstrap_servers=addr(secure, listener), enable_auto_commit=False,
                          consumer_timeout_ms=10000, **kw)
        c.assign([KTP(topic, 0)])
        c.seek_to_beginning()
        got = [m.value.decode() for _, m in zip(range(COUNT), c)]
        c.close()
        assert got == [f"{topic}-{i}" for i in range(COUNT)], (name, got)

    # KafkaJS
    node = shutil.which("node")
    assert node, "node is not installed: run scripts/install-test-deps.sh"
    for mechanism, user, password in [("scram-sha-512", "admin", ADMIN_PASSWORD), ("plain", "alice", ALICE_PASSWORD)]:
        topic = unique(f"kjs-{mechanism}")
        cfg = {"bootstrap": addr(secure, "SASLTLS"), "topic": topic, "count": COUNT, "ca": str(pki.ca_pem),
               "sasl": {"mechanism": mechanism, "username": user, "password": password}}
        r = subprocess.run([node, str(NODE_DIR / "secure_client.js"), json.dumps(cfg)], cwd=str(NODE_DIR),
                           capture_output=True, text=True, timeout=90)
        out = json.loads(r.stdout.strip().splitlines()[-1])
        assert out["ok"], (mechanism, out, r.stderr[-2000:])
        assert out["values"] == [f"kafkajs-{i}" for i in range(COUNT)]
    topic = unique("kjs-mtls")
    cfg = {"bootstrap": addr(secure, "TLS"), "topic": topic, "count": COUNT, "ca": str(pki.ca_pem),
           "cert": str(pki.client_cert), "key": str(pki.client_key)}
    r = subprocess.run([node, str(NODE_DIR / "secure_client.js"), json.dumps(cfg)], cwd=str(NODE_DIR),
                       capture_output=True, text=True, timeout=90)
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["ok"], ("mTLS", out, r.stderr[-2000:])
    cfg = {"bootstrap": addr(secure, "SASLTLS"), "topic": unique("kjs-bad"), "count": 1, "ca": str(pki.ca_pem),
           "retries": 0, "sasl": {"mechanism": "scram-sha-256", "username": "alice", "password": "nope"}}
    r = subprocess.run([node, str(NODE_DIR / "secure_client.js"), json.dumps(cfg)], cwd=str(NODE_DIR),
                       capture_output=True, text=True, timeout=90)
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert not out["ok"] and "SASL" in out["error"], out


def test_a_rotated_certificate_is_served_to_new_connections_while_old_ones_stay(secure, pki):
    """cert-manager replaces the keystore: new TLS connections get the new certificate
    within the reload interval, a producer connected before keeps producing, and a
    keystore caught half-written is refused (counted) while the last good one stays."""
    port = secure.listener_ports["TLS"]
    assert pki.served_serial(port) == pki.server_serial
    topic = unique("rotate")
    conf = librdkafka_conf(secure, pki, "TLS")
    errors: list = []
    p = Producer({**conf, "error_cb": errors.append})
    delivered: list = []
    p.produce(topic, b"before", on_delivery=lambda err, msg: delivered.append(err))
    assert p.flush(30) == 0

    new_serial = pki.rotate()
    wait_until(lambda: pki.served_serial(port) == new_serial, 15, "the rotated certificate served")
    assert metric(secure, "strata_kafka_tls_reloads_total", result="reloaded") >= 1

    p.produce(topic, b"after", on_delivery=lambda err, msg: delivered.append(err))
    assert p.flush(30) == 0
    assert delivered == [None, None], (delivered, errors)

    pki.keystore.write_text("-----BEGIN PRIVATE KEY-----\ntruncated")
    wait_until(
        lambda: metric(secure, "strata_kafka_tls_reloads_total", result="failed") >= 1,
        15,
        "the broken keystore refused",
    )
    assert pki.served_serial(port) == new_serial
    c = Consumer({**conf, "group.id": unique("g"), "auto.offset.reset": "earliest"})
    c.assign([TopicPartition(topic, 0, 0)])
    got = []
    deadline = time.monotonic() + 30
    while len(got) < 2 and time.monotonic() < deadline:
        m = c.poll(0.5)
        if m is not None and m.error() is None:
            got.append(m.value())
    c.close()
    assert got == [b"before", b"after"]


def test_sasl_sessions_are_reauthenticated_without_reconnecting(broker_factory, pki):
    """connections.max.reauth.ms=1500 (KIP-368): librdkafka re-authenticates its
    connections in band; a producer sending for 6 s loses nothing, no connection is
    closed for an expired session, and logins keep being counted."""
    b = broker_factory(env=secure_env(pki, STRATA_KAFKA_CONNECTIONS_MAX_REAUTH_MS="1500"))
    conf = librdkafka_conf(b, pki, "SASLTLS", "admin", ADMIN_PASSWORD)
    errors: list = []
    p = Producer({**conf, "error_cb": errors.append})
    topic = unique("reauth")
    delivered: list = []
    p.produce(topic, b"0", on_delivery=lambda err, msg: delivered.append(err))
    assert p.flush(30) == 0
    logins = metric(b, "strata_kafka_authentications_total", mechanism="SCRAM-SHA-512", result="success")
    connections = metric(b, "strata_kafka_connections_total")
    for i in range(1, 13):
        time.sleep(0.5)
        p.produce(topic, str(i).encode(), on_delivery=lambda err, msg: delivered.append(err))
        p.poll(0)
    assert p.flush(30) == 0
    assert delivered == [None] * 13, (delivered, errors)
    assert metric(b, "strata_kafka_authentications_total", mechanism="SCRAM-SHA-512", result="success") >= logins + 2
    assert metric(b, "strata_kafka_connection_errors_total", reason="reauthentication_required") == 0
    assert metric(b, "strata_kafka_connections_total") == connections, "a connection was replaced"


# --- OAUTHBEARER -------------------------------------------------------------------

ISSUER = "https://idp.strata.test"
AUDIENCE = "strata-kafka"


class IdP:
    """An identity provider of the test's own: an RSA key, its JWKS, and RS256 JWTs."""

    def __init__(self, root: Path, kid: str = "test-key"):
        from cryptography.hazmat.primitives.asymmetric import rsa

        self.kid = kid
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        root.mkdir(parents=True, exist_ok=True)
        self.jwks = root / "jwks.json"
        self.jwks.write_text(json.dumps({"keys": [self.jwk()]}))

    def jwk(self) -> dict:
        nums = self.key.public_key().public_numbers()

        def b64int(v: int) -> str:
            return _b64url(v.to_bytes((v.bit_length() + 7) // 8, "big"))

        return {"kty": "RSA", "kid": self.kid, "use": "sig", "alg": "RS256", "n": b64int(nums.n), "e": b64int(nums.e)}

    def token(self, sub: str, lifetime_s: int = 300, **claims) -> str:
        from cryptography.hazmat.primitives.asymmetric import padding

        now = int(time.time())
        body = {"sub": sub, "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + lifetime_s, **claims}
        head = {"alg": "RS256", "kid": self.kid, "typ": "JWT"}
        signed = f"{_b64url(json.dumps(head).encode())}.{_b64url(json.dumps(body).encode())}"
        sig = self.key.sign(signed.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signed}.{_b64url(sig)}"


def _b64url(b: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def oauth_conf(b, pki: Pki, token_fn) -> dict:
    return {
        "bootstrap.servers": addr(b, "SASLTLS"),
        "security.protocol": "SASL_SSL",
        "ssl.ca.location": str(pki.ca_pem),
        "sasl.mechanism": "OAUTHBEARER",
        # librdkafka refuses to hand over a token it knows to be expired: it is told the
        # token lasts five minutes, whatever the token itself says.
        "oauth_cb": lambda _config: (token_fn(), time.time() + 300),
    }


@pytest.fixture
def jwks_server(tmp_path):
    """An HTTP server for tmp_path's files (the identity provider's JWKS endpoint)."""
    import functools
    import http.server
    import threading

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_oauthbearer_tokens_from_our_own_idp_are_checked(broker_factory, pki, tmp_path, jwks_server):
    """OAUTHBEARER with RS256 JWTs against a JWKS fetched over HTTP: a valid token logs
    in (and becomes the principal ACLs would see) with confluent-kafka, kafka-python
    and KafkaJS; expired tokens, another issuer or audience, and a key the JWKS does
    not hold are refused; a rotated JWKS is picked up."""
    idp = IdP(tmp_path)
    b = broker_factory(env=secure_env(
        pki,
        STRATA_KAFKA_SASL_ENABLED_MECHANISMS="SCRAM-SHA-512,OAUTHBEARER",
        STRATA_KAFKA_SASL_OAUTHBEARER_JWKS_ENDPOINT_URL=f"{jwks_server}/jwks.json",
        STRATA_KAFKA_SASL_OAUTHBEARER_JWKS_ENDPOINT_REFRESH_MS="200",
        STRATA_KAFKA_SASL_OAUTHBEARER_EXPECTED_ISSUER=ISSUER,
        STRATA_KAFKA_SASL_OAUTHBEARER_EXPECTED_AUDIENCE=AUDIENCE,
    ))
    confluent_roundtrip(oauth_conf(b, pki, lambda: idp.token("svc-orders")), unique("oauth"))
    assert "principal=User:svc-orders" in b.log_text()

    for bad in [
        lambda: idp.token("late", lifetime_s=-120),
        lambda: idp.token("elsewhere", iss="https://evil.test"),
        lambda: idp.token("wrong-aud", aud="another-service"),
        lambda: IdP(tmp_path / "other", kid="test-key").token("forged"),
    ]:
        err = auth_error(oauth_conf(b, pki, bad))
        assert err.code() == KafkaError._AUTHENTICATION, err
    assert metric(b, "strata_kafka_authentications_total", mechanism="OAUTHBEARER", result="failure") >= 4

    # kafka-python
    from kafka import KafkaProducer
    from kafka.net.sasl.oauth import AbstractTokenProvider

    class Provider(AbstractTokenProvider):
        def token(self):
            return idp.token("kpy-svc")

    p = KafkaProducer(bootstrap_servers=addr(b, "SASLTLS"), security_protocol="SASL_SSL",
                      sasl_mechanism="OAUTHBEARER", sasl_oauth_token_provider=Provider(),
                      ssl_cafile=str(pki.ca_pem))
    p.send(unique("kpy-oauth"), b"v").get(timeout=30)
    p.close()

    # KafkaJS
    node = shutil.which("node")
    assert node, "node is not installed: run scripts/install-test-deps.sh"
    cfg = {"bootstrap": addr(b, "SASLTLS"), "topic": unique("kjs-oauth"), "count": 2, "ca": str(pki.ca_pem),
           "sasl": {"token": idp.token("kjs-svc")}}
    r = subprocess.run([node, str(NODE_DIR / "secure_client.js"), json.dumps(cfg)], cwd=str(NODE_DIR),
                       capture_output=True, text=True, timeout=90)
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["ok"], (out, r.stderr[-2000:])

    # The IdP rotates to a new key: tokens signed by it work once the JWKS lists it.
    new = IdP(tmp_path / "rotated", kid="next-key")
    idp.jwks.write_text(json.dumps({"keys": [idp.jwk(), new.jwk()]}))
    wait_until(lambda: "JWKS reloaded" in b.log_text(), 15, "the rotated JWKS read")
    confluent_roundtrip(oauth_conf(b, pki, lambda: new.token("svc-next")), unique("oauth-next"))


# --- a cluster on mTLS ------------------------------------------------------------------


def test_a_cluster_on_mtls_replicates_and_rides_a_certificate_rotation(cluster_factory, pki):
    """Three nodes with every connection on mTLS from one keystore: the Kafka listener
    (Kafka's PLAINTEXT name mapped to SSL, client certificates required), replication
    and transaction markers between brokers, and the metadata quorum's RPCs
    (strata.meta.tls). A workload keeps producing while the certificate is rotated on
    disk and a node is killed and restarted (it rejoins with the new certificate);
    nothing acknowledged is lost, and a plaintext client gets nowhere."""
    env = {
        "STRATA_KAFKA_LISTENER_SECURITY_PROTOCOL_MAP": "PLAINTEXT:SSL",
        "STRATA_KAFKA_SSL_KEYSTORE_LOCATION": str(pki.keystore),
        "STRATA_KAFKA_SSL_TRUSTSTORE_LOCATION": str(pki.ca_pem),
        "STRATA_KAFKA_SSL_CLIENT_AUTH": "required",
        "STRATA_META_TLS": "true",
        "STRATA_SSL_RELOAD_INTERVAL_MS": "300",
        # The harness reads placements from /api/v1, closed without it once TLS is on.
        "STRATA_HTTP_ADMIN_TOKEN": "mtls-token-77",
    }
    conf = {
        "security.protocol": "SSL",
        "ssl.ca.location": str(pki.ca_pem),
        "ssl.certificate.location": str(pki.client_cert),
        "ssl.key.location": str(pki.client_key),
    }
    c = cluster_factory(env=env, client_conf=conf)
    topic = unique("mtls")
    c.create_topic(topic, 2)
    c.wait_isr(topic, 2, 3)
    w = c.workload(topic, 2)
    w.wait_acked(200)

    new_serial = pki.rotate()
    for i in c.nodes:
        wait_until(
            lambda i=i: sum(metric_values(c.metrics(i), "strata_kafka_tls_reloads_total", result="reloaded")) >= 1,
            15,
            f"node {i} reloaded its certificate",
        )
    assert pki.served_serial(c.nodes[1].kafka_port, c.nodes[1].host) == new_serial
    victim = c.leader_of(topic, 0)
    c.kill(victim)
    c.wait_leader_moved(topic, 0, victim)
    w.wait_acked(200)
    c.restart(victim)
    c.wait_isr(topic, 2, 3)
    w.finish()
    acked = w.verify()
    assert sum(acked.values()) >= 400, acked

    err = auth_error({"bootstrap.servers": c.bootstrap, "security.protocol": "PLAINTEXT"})
    assert err.code() in (KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN), err
    # Nor does a plaintext peer of the metadata quorum.
    n = c.nodes[2]
    with socket.create_connection((n.host, n.meta_port), timeout=10) as s:
        s.sendall(struct.pack(">I", 2) + b"{}")
        try:
            reply = s.recv(64)
        except ConnectionResetError:
            reply = b""
        # Nothing, or a TLS alert record (content type 21): never a metadata frame.
        assert reply == b"" or reply[0] == 0x15, f"the metadata port answered plaintext: {reply!r}"

    wait_until(lambda: "metadata listener: handshake failed" in n.process.log_text(), 10,
               "the plaintext peer refused")
    # A client's certificate from the same CA gets through TLS but is no quorum peer.
    ctx = ssl.create_default_context(cafile=str(pki.ca_pem))
    ctx.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    with socket.create_connection((n.host, n.meta_port), timeout=10) as raw:
        try:
            with ctx.wrap_socket(raw, server_hostname=n.host) as tls:
                tls.sendall(struct.pack(">I", 2) + b"{}")
                assert tls.recv(64) == b"", "the quorum answered a client's certificate"
        except (ssl.SSLError, ConnectionError):
            pass
    wait_until(lambda: "is not one of this cluster's nodes" in n.process.log_text(), 10,
               "the client certificate refused as a quorum peer")


def test_the_http_port_speaks_tls_and_keeps_api_routes_behind_the_token(broker_factory, pki):
    """strata.http.tls: health, readiness, metrics and /api/v1 over TLS with the same
    keystore; a plain HTTP request gets no answer; /api/v1 wants the bearer token."""
    import urllib.error
    import urllib.request

    b = broker_factory(env=secure_env(pki, STRATA_HTTP_TLS="true", STRATA_HTTP_ADMIN_TOKEN="tok-3e9"))
    https = b.http.replace("http://", "https://")
    ctx = ssl.create_default_context(cafile=str(pki.ca_pem))

    def get(path: str, token: str | None = None) -> int:
        req = urllib.request.Request(https + path)
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=10, context=ctx) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code

    assert get("/readyz") == 200
    assert get("/metrics") == 200
    assert get("/api/v1/cluster") == 401
    assert get("/api/v1/cluster", "tok-3e9") == 200
    import http.client

    # Plain HTTP to the TLS port: a TLS alert back, never an HTTP answer.
    with pytest.raises((urllib.error.URLError, http.client.HTTPException, OSError)):
        urllib.request.urlopen(b.http + "/readyz", timeout=5)
