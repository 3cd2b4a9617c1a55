"""Kafka ACLs end to end, managed with confluent-kafka's AdminClient (CreateAcls,
DescribeAcls, DeleteAcls) and enforced on real clients: a SASL_PLAINTEXT listener,
`authorizer.class.name` set as a config ported from Kafka would set it, `admin` a super
user, `alice` and `bob` ordinary SCRAM users.
"""

from __future__ import annotations

import time

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    NewTopic,
    ResourcePatternType,
    ResourceType,
)

from strata_helpers import metric_values, unique, wait_until

PASSWORDS = {"admin": "admin-pw-5c1e", "alice": "alice-pw-0b7d", "bob": "bob-pw-e2a9"}
STANDARD = "org.apache.kafka.metadata.authorizer.StandardAuthorizer"


def acl_env(**extra: str) -> dict[str, str]:
    env = {
        "STRATA_KAFKA_LISTENERS": "SASL_PLAINTEXT://127.0.0.1:0",
        "STRATA_KAFKA_AUTHORIZER_CLASS_NAME": STANDARD,
        "STRATA_KAFKA_SUPER_USERS": "User:admin",
        "STRATA_SCRAM_BOOTSTRAP": ",".join(
            f"SCRAM-SHA-256=[name={u},password={p}]" for u, p in PASSWORDS.items()
        ),
    }
    env.update(extra)
    return env


def conf(b, user: str) -> dict:
    return {
        "bootstrap.servers": b.bootstrap,
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": "SCRAM-SHA-256",
        "sasl.username": user,
        "sasl.password": PASSWORDS[user],
    }


def produce(b, user: str, topic: str, values: list[bytes]) -> list:
    """Delivery errors (None for delivered), one per value."""
    p = Producer({**conf(b, user), "message.timeout.ms": 10000, "retries": 0})
    results: list = []
    for v in values:
        p.produce(topic, v, on_delivery=lambda err, msg: results.append(err))
    p.flush(20)
    return [None if e is None else e.code() for e in results]


def consume(b, user: str, topic: str, group: str, count: int, timeout: float = 20):
    """(values read, first error code) of a subscribed consumer in `group`."""
    c = Consumer({**conf(b, user), "group.id": group, "auto.offset.reset": "earliest",
                  "enable.auto.commit": False})
    got, error = [], None
    try:
        c.subscribe([topic])
        deadline = time.monotonic() + timeout
        while len(got) < count and error is None and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is None:
                continue
            if m.error() is None:
                got.append(m.value())
            elif m.error().code() != KafkaError._PARTITION_EOF:
                error = m.error().code()
        if got and error is None:
            c.commit(asynchronous=False)
    except KafkaException as e:
        error = e.args[0].code()
    finally:
        c.close()
    return got, error


def allow(rt, name, principal, op, pattern=ResourcePatternType.LITERAL, perm=AclPermissionType.ALLOW):
    return AclBinding(rt, name, pattern, principal, "*", op, perm)


def create_acls(admin: AdminClient, bindings: list[AclBinding]) -> None:
    for f in admin.create_acls(bindings).values():
        f.result(timeout=20)


@pytest.fixture
def acl_broker(broker_factory):
    return broker_factory(env=acl_env())


def test_a_read_grant_on_a_topic_and_a_group_allows_that_and_nothing_else(acl_broker):
    b = acl_broker
    admin = AdminClient(conf(b, "admin"))
    a, other = unique("a"), unique("b")
    for f in admin.create_topics([NewTopic(a, 1, 1), NewTopic(other, 1, 1)]).values():
        f.result(timeout=20)
    assert produce(b, "admin", a, [b"a0", b"a1"]) == [None, None], "a super user writes anywhere"
    assert produce(b, "admin", other, [b"b0"]) == [None]
    group = unique("g")
    create_acls(admin, [
        allow(ResourceType.TOPIC, a, "User:alice", AclOperation.READ),
        allow(ResourceType.GROUP, group, "User:alice", AclOperation.READ),
    ])

    got, err = consume(b, "alice", a, group, 2)
    assert (got, err) == ([b"a0", b"a1"], None)

    # Nothing else: writing a, reading b, another group, creating topics, listing more
    # than a, managing ACLs.
    assert produce(b, "alice", a, [b"x"]) == [KafkaError.TOPIC_AUTHORIZATION_FAILED]
    _, err = consume(b, "alice", other, group, 1)
    assert err == KafkaError.TOPIC_AUTHORIZATION_FAILED
    _, err = consume(b, "alice", a, unique("h"), 1)
    assert err == KafkaError.GROUP_AUTHORIZATION_FAILED
    alice = AdminClient(conf(b, "alice"))
    with pytest.raises(KafkaException) as created:
        list(alice.create_topics([NewTopic(unique("new"), 1, 1)]).values())[0].result(timeout=20)
    assert created.value.args[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    listed = set(alice.list_topics(timeout=20).topics)
    assert a in listed and other not in listed, listed
    everything = AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, None, None,
                                  AclOperation.ANY, AclPermissionType.ANY)
    assert len(admin.describe_acls(everything).result(timeout=20)) == 2
    # The broker answers CLUSTER_AUTHORIZATION_FAILED, which librdkafka's DescribeAcls
    # parser drops (it reads the error and returns the empty list): nothing is shown.
    assert alice.describe_acls(everything).result(timeout=20) == []
    assert 'api="DescribeAcls" operation="DESCRIBE" resource_type="CLUSTER"' in b.log_text()

    # With the authorizer on, the HTTP port's detailed routes are closed (no token set);
    # the probes and metrics stay open.
    import urllib.request
    with pytest.raises(urllib.error.HTTPError) as closed:
        urllib.request.urlopen(b.http + "/api/v1/cluster", timeout=10)
    assert closed.value.code == 403
    assert b.http_get("/readyz")[0] == 200

    denied = sum(metric_values(b.metrics(), "strata_kafka_authorization_denied_total"))
    assert denied >= 4, denied
    assert "authorization denied" in b.log_text()


def test_prefixed_grants_deny_wins_and_acls_survive_a_restart(acl_broker):
    b = acl_broker
    admin = AdminClient(conf(b, "admin"))
    prefix = unique("logs") + "-"
    app, secret = prefix + "app", prefix + "secret"
    for f in admin.create_topics([NewTopic(app, 1, 1), NewTopic(secret, 1, 1)]).values():
        f.result(timeout=20)
    create_acls(admin, [
        allow(ResourceType.TOPIC, prefix, "User:bob", AclOperation.WRITE, ResourcePatternType.PREFIXED),
        allow(ResourceType.TOPIC, secret, "User:bob", AclOperation.ALL, perm=AclPermissionType.DENY),
        allow(ResourceType.TOPIC, "*", "User:*", AclOperation.DESCRIBE),
    ])
    assert produce(b, "bob", app, [b"1"]) == [None]
    assert produce(b, "bob", secret, [b"1"]) == [KafkaError.TOPIC_AUTHORIZATION_FAILED]

    everything = AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, None, None,
                                  AclOperation.ANY, AclPermissionType.ANY)
    listed = admin.describe_acls(everything).result(timeout=20)
    assert len(listed) == 3, listed
    prefixed = [x for x in listed if x.resource_pattern_type == ResourcePatternType.PREFIXED]
    assert [(x.name, x.principal, x.operation) for x in prefixed] == [(prefix, "User:bob", AclOperation.WRITE)]

    b.restart()
    admin = AdminClient(conf(b, "admin"))
    assert len(admin.describe_acls(everything).result(timeout=20)) == 3
    assert produce(b, "bob", app, [b"2"]) == [None]
    assert produce(b, "bob", secret, [b"2"]) == [KafkaError.TOPIC_AUTHORIZATION_FAILED]

    # DeleteAcls by filter: bob's prefixed grant goes, and with it his writes.
    deleted = admin.delete_acls([AclBindingFilter(ResourceType.TOPIC, prefix, ResourcePatternType.PREFIXED,
                                                  "User:bob", None, AclOperation.ANY, AclPermissionType.ANY)])
    removed = list(deleted.values())[0].result(timeout=20)
    assert [(x.name, x.operation) for x in removed] == [(prefix, AclOperation.WRITE)]
    assert produce(b, "bob", app, [b"3"]) == [KafkaError.TOPIC_AUTHORIZATION_FAILED]


def test_without_an_authorizer_the_acl_apis_say_security_is_disabled(broker_factory):
    b = broker_factory(env={"STRATA_KAFKA_LISTENERS": "PLAINTEXT://127.0.0.1:0"})
    admin = AdminClient({"bootstrap.servers": b.bootstrap})
    futures = admin.create_acls([allow(ResourceType.TOPIC, "t", "User:alice", AclOperation.READ)])
    with pytest.raises(KafkaException) as e:
        list(futures.values())[0].result(timeout=20)
    assert e.value.args[0].code() == KafkaError.SECURITY_DISABLED


def test_acls_hold_on_every_broker_after_the_leader_is_killed(cluster_factory):
    """A 3-node cluster with the authorizer on: bindings live in the metadata quorum, so
    a DENY made through one broker is enforced by the partition's next leader after the
    first is SIGKILLed, and by the killed node once it is back. (PLAINTEXT everywhere:
    clients and brokers are all User:ANONYMOUS, allowed where no binding names a
    resource, which also lets the brokers replicate.)"""
    c = cluster_factory(env={
        "STRATA_KAFKA_AUTHORIZER_CLASS_NAME": STANDARD,
        "STRATA_KAFKA_ALLOW_EVERYONE_IF_NO_ACL_FOUND": "true",
        # The harness reads placements from /api/v1/cluster, closed without it.
        "STRATA_HTTP_ADMIN_TOKEN": "cluster-token-4d1",
    })
    secret, open_ = unique("secret"), unique("open")
    c.create_topic(secret, 1)
    c.create_topic(open_, 1)
    c.wait_isr(secret, 1, 3)
    admin = AdminClient({"bootstrap.servers": c.bootstrap})
    create_acls(admin, [allow(ResourceType.TOPIC, secret, "User:*", AclOperation.WRITE,
                              perm=AclPermissionType.DENY)])

    def attempt(topic: str):
        p = Producer({"bootstrap.servers": c.bootstrap, "message.timeout.ms": 15000, "retries": 5})
        out: list = []
        p.produce(topic, b"x", on_delivery=lambda err, msg: out.append(err))
        p.flush(30)
        return [None if e is None else e.code() for e in out]

    assert attempt(secret) == [KafkaError.TOPIC_AUTHORIZATION_FAILED]
    assert attempt(open_) == [None]
    leader = c.leader_of(secret, 0)
    c.kill(leader)
    c.wait_leader_moved(secret, 0, leader)
    assert attempt(secret) == [KafkaError.TOPIC_AUTHORIZATION_FAILED]
    assert attempt(open_) == [None]
    c.restart(leader)
    only = AdminClient({"bootstrap.servers": c.nodes[leader].kafka_address})
    everything = AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, None, None,
                                  AclOperation.ANY, AclPermissionType.ANY)
    wait_until(lambda: len(only.describe_acls(everything).result(timeout=20)) == 1, 30,
               "the restarted broker knows the binding")


def test_a_client_certificate_subject_is_the_principal_acls_name(broker_factory, tmp_path):
    """mTLS: the verified certificate's subject, as Kafka writes it
    (User:CN=alice-client,O=Strata Tests), is what ACLs grant to."""
    from test_security import Pki

    pki = Pki(tmp_path / "pki")
    b = broker_factory(env={
        "STRATA_KAFKA_LISTENERS": "SSL://127.0.0.1:0",
        "STRATA_KAFKA_SSL_KEYSTORE_LOCATION": str(pki.keystore),
        "STRATA_KAFKA_SSL_TRUSTSTORE_LOCATION": str(pki.ca_pem),
        "STRATA_KAFKA_SSL_CLIENT_AUTH": "required",
        "STRATA_KAFKA_AUTHORIZER_CLASS_NAME": STANDARD,
        "STRATA_KAFKA_SUPER_USERS": "User:CN=admin-client,O=Strata Tests",
    })
    admin_key, admin_cert = pki._client(pki.ca, "admin-client")
    tls = {"bootstrap.servers": b.bootstrap, "security.protocol": "SSL", "ssl.ca.location": str(pki.ca_pem)}
    admin = AdminClient({**tls, "ssl.certificate.location": str(admin_cert), "ssl.key.location": str(admin_key)})
    mine, theirs = unique("mine"), unique("theirs")
    for f in admin.create_topics([NewTopic(mine, 1, 1), NewTopic(theirs, 1, 1)]).values():
        f.result(timeout=20)
    create_acls(admin, [allow(ResourceType.TOPIC, mine, "User:CN=alice-client,O=Strata Tests", AclOperation.WRITE)])

    alice = {**tls, "ssl.certificate.location": str(pki.client_cert), "ssl.key.location": str(pki.client_key)}
    for topic, want in [(mine, None), (theirs, KafkaError.TOPIC_AUTHORIZATION_FAILED)]:
        p = Producer({**alice, "message.timeout.ms": 10000, "retries": 0})
        got: list = []
        p.produce(topic, b"v", on_delivery=lambda err, msg: got.append(err))
        p.flush(20)
        assert [None if e is None else e.code() for e in got] == [want], topic
    assert "principal=User:CN=alice-client,O=Strata Tests" in b.log_text()
