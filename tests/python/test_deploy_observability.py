"""What operators watch a deployment with: the Prometheus alerting rules, the Grafana
dashboard, and the metrics both query.

- `promtool check rules` and `promtool test rules` pass on the alerting rules and their
  unit tests (tests/deploy/alerts.test.yaml), which show every alert firing and not
  firing; every alert has a severity, a summary, a description and a runbook link to a
  section of docs/operations.md that exists.
- The dashboard is plain JSON (the Helm chart embeds it with `.Files.Get`, compose mounts
  it) that Grafana can load: unique panel ids, every panel with the `${datasource}`
  data source and queries, and every query valid PromQL (promtool parses them).
- Every metric the dashboard and the alerts query is documented in docs/metrics.md and
  exists on the `/metrics` of a live 3-node cluster (replication metrics need one) after
  a little traffic: produce, an error answer, a bad frame, uploads of small segments and
  reads of them back from the object store, so that labelled families have series.
  `promtool check metrics` accepts each node's exposition.

promtool comes with Debian's `prometheus` package (scripts/install-deploy-tools.sh).
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from strata_helpers import consume_all, metric_values, parse_metrics, unique, wait_until

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "helm" / "strata" / "files" / "grafana" / "strata-dashboard.json"
ALERTS = REPO / "helm" / "strata" / "files" / "prometheus" / "strata-alerts.yaml"
ALERT_TESTS = REPO / "tests" / "deploy" / "alerts.test.yaml"
OPERATIONS = REPO / "docs" / "operations.md"
METRICS_DOC = REPO / "docs" / "metrics.md"
RUNBOOK_BASE = "https://github.com/strata-io/strata/blob/main/docs/operations.md#"

# Series Prometheus makes itself for every target, not the broker.
SCRAPE_SERIES = {"up"}
# The rows the dashboard is organised in, in order.
DASHBOARD_ROWS = [
    "Kafka traffic",
    "Log & WAL",
    "Tiered storage",
    "Per-topic object-store cost",
    "Replication",
    "Metadata quorum",
    "Consumer groups",
]
# Grafana's variables, as a query would see them once interpolated (for promtool).
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "1h",
    "$job": ".*",
    "$instance": ".*",
    "$topic": ".*",
}


def promtool() -> str:
    path = shutil.which("promtool") or "/usr/bin/promtool"
    if not Path(path).is_file():
        raise FileNotFoundError(
            "promtool is not installed: run scripts/install-deploy-tools.sh "
            "(Debian package prometheus)"
        )
    return path


def run_promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [promtool(), *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )


# -- PromQL: which metrics a query reads ------------------------------------------------

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_OFFSET = re.compile(r"\boffset\s+-?[0-9a-zA-Z]+")
_AT = re.compile(r"@\s*(?:(?:start|end)\s*\(\s*\)|[0-9.]+)")
_VARIABLE = re.compile(r"\$\{?\w+(?::\w+)?\}?")
_IDENT = re.compile(r"(?<![\w.:$])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?")
_KEYWORDS = {
    "and", "or", "unless", "bool", "by", "without", "on", "ignoring",
    "group_left", "group_right", "offset", "inf", "nan",
}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: what is left of it once strings,
    label matchers, ranges, grouping clauses, modifiers, function and aggregation names,
    keywords and numbers are taken out. `x_bucket` stays as written: it is the name of
    the series a histogram exposes."""
    e = _STRING.sub(" ", expr)
    e = _MATCHERS.sub(" ", e)
    e = _RANGE.sub(" ", e)
    e = _GROUPING.sub(" ", e)
    e = _OFFSET.sub(" ", e)
    e = _AT.sub(" ", e)
    e = _VARIABLE.sub(" ", e)
    names = set()
    for m in _IDENT.finditer(e):
        word, call = m.group(1), m.group(2)
        if call or word.lower() in _KEYWORDS:
            continue
        names.add(word)
    return names


def variable_query_names(query: str) -> set[str]:
    """Metric names of a Grafana Prometheus variable query: `label_values(metric, label)`
    reads the metric (`label_values(label)` none), `query_result(expr)` the expression,
    `metrics(regex)` and `label_names()` no particular one."""
    q = query.strip()
    if m := re.fullmatch(r"label_values\((.*),\s*[a-zA-Z_]\w*\s*\)", q, re.S):
        return metric_names(m.group(1))
    if m := re.fullmatch(r"query_result\((.*)\)", q, re.S):
        return metric_names(m.group(1))
    if re.fullmatch(r"label_values\(\s*[a-zA-Z_]\w*\s*\)|metrics\(.*\)|label_names\(.*\)", q, re.S):
        return set()
    return metric_names(q)


def test_metric_names_are_extracted_from_promql():
    cases = {
        'sum by (api, error) (rate(strata_kafka_request_errors_total{job=~"$job", '
        'error!="NONE"}[$__rate_interval]))': {"strata_kafka_request_errors_total"},
        "histogram_quantile(0.99, sum by (le) (rate(x_seconds_bucket{a=\"b{c}\"}[5m:1m])))":
            {"x_seconds_bucket"},
        "sum(rate(a_total[5m])) by (instance) / ignoring(op) group_left(x) b offset 1h > 0.05":
            {"a_total", "b"},
        "max by (job) (m{job=~\".*strata.*\"}) < 0 or absent(m{job=~\".*strata.*\"})": {"m"},
        "up == 0 and on (job, instance) c > 1e9 unless d @ start()": {"up", "c", "d"},
        "topk(10, sum without (le) (increase(e[1d]) * 0x10 or f * 4e-7))": {"e", "f"},
        "vector(1) + time() - scalar(g:recorded:rate5m)": {"g:recorded:rate5m"},
    }
    for expr, want in cases.items():
        assert metric_names(expr) == want, expr
    assert variable_query_names('label_values(strata_meta_term{job=~"$job"}, instance)') == {
        "strata_meta_term"
    }
    assert variable_query_names("label_values(job)") == set()


# -- the files ------------------------------------------------------------------------------


def load_alerts() -> list[dict]:
    doc = yaml.safe_load(ALERTS.read_text())
    assert list(doc) == ["groups"], f"{ALERTS.name}: a rules file has only `groups`: {list(doc)}"
    rules = [r for g in doc["groups"] for r in g["rules"]]
    alerts = [r for r in rules if "alert" in r]
    assert alerts and len(alerts) == len(rules), "the file holds alerting rules only"
    return alerts


def load_dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_panels(dashboard: dict) -> list[dict]:
    """Every panel, those inside collapsed rows included."""
    out = []
    for p in dashboard["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def dashboard_queries(dashboard: dict) -> list[tuple[str, str]]:
    """(where, PromQL) of every panel query."""
    return [
        (f"panel {p['id']} {p.get('title')!r} target {t.get('refId')}", t["expr"])
        for p in dashboard_panels(dashboard)
        for t in p.get("targets", [])
    ]


def dashboard_variable_queries(dashboard: dict) -> list[tuple[str, str]]:
    out = []
    for v in dashboard["templating"]["list"]:
        if v["type"] == "query":
            q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            out.append((f"variable {v['name']}", q))
    return out


def interpolate(expr: str) -> str:
    for var, value in sorted(GRAFANA_VARIABLES.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(var, value)
    assert "$" not in expr, f"a Grafana variable the test does not know: {expr}"
    return expr


def queried_metrics() -> dict[str, list[str]]:
    """Metric name -> where it is queried (dashboard panels and variables, alerts)."""
    found: dict[str, list[str]] = {}
    dashboard = load_dashboard()
    for where, expr in dashboard_queries(dashboard):
        for name in metric_names(expr):
            found.setdefault(name, []).append(f"dashboard {where}")
    for where, query in dashboard_variable_queries(dashboard):
        for name in variable_query_names(query):
            found.setdefault(name, []).append(f"dashboard {where}")
    for rule in load_alerts():
        for name in metric_names(rule["expr"]):
            found.setdefault(name, []).append(f"alert {rule['alert']}")
    return found


def github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives a document's headings (lower case, punctuation dropped,
    spaces as hyphens, repeats numbered)."""
    anchors: set[str] = set()
    in_code = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        if in_code or not (m := re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)):
            continue
        slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
        anchor, n = slug, 0
        while anchor in anchors:
            n += 1
            anchor = f"{slug}-{n}"
        anchors.add(anchor)
    return anchors


# -- alerts -----------------------------------------------------------------------------------


def test_alert_rules_pass_promtool_check_and_their_unit_tests():
    check = run_promtool("check", "rules", str(ALERTS))
    assert check.returncode == 0, f"promtool check rules:\n{check.stdout}\n{check.stderr}"
    assert f"SUCCESS: {len(load_alerts())} rules found" in check.stdout, check.stdout
    test = run_promtool("test", "rules", str(ALERT_TESTS))
    assert test.returncode == 0, f"promtool test rules:\n{test.stdout}\n{test.stderr}"
    assert "SUCCESS" in test.stdout, test.stdout


def test_every_alert_is_labelled_annotated_and_unit_tested_firing_and_quiet():
    alerts = load_alerts()
    names = [a["alert"] for a in alerts]
    assert len(set(names)) == len(names), f"duplicate alert names: {names}"
    for required in (
        "StrataBrokerDown",
        "StrataOfflinePartitions",
        "StrataUnderReplicatedPartitions",
        "StrataMetadataQuorumWithoutLeader",
        "StrataObjectStoreDown",
        "StrataObjectStoreErrors",
        "StrataUnuploadedBytesHigh",
        "StrataProduceThrottled",
    ):
        assert required in names, f"alert {required} is missing"

    anchors = github_anchors(OPERATIONS.read_text())
    for a in alerts:
        name = a["alert"]
        assert a.get("labels", {}).get("severity") in ("critical", "warning"), name
        annotations = a.get("annotations", {})
        assert annotations.get("summary") and annotations.get("description"), name
        url = annotations.get("runbook_url", "")
        assert url.startswith(RUNBOOK_BASE), f"{name}: runbook_url {url!r}"
        anchor = url[len(RUNBOOK_BASE):]
        assert anchor == name.lower(), f"{name}: runbook anchor {anchor!r}"
        assert anchor in anchors, f"{name}: docs/operations.md has no heading with anchor #{anchor}"

    spec = yaml.safe_load(ALERT_TESTS.read_text())
    assert spec["rule_files"] == [str(Path("..", "..", ALERTS.relative_to(REPO)))]
    firing: set[str] = set()
    quiet: set[str] = set()
    for t in spec["tests"]:
        for case in t.get("alert_rule_test", []):
            (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
            for exp in case.get("exp_alerts") or []:
                # Labels and annotations are compared whole: the rendered text is tested.
                assert set(exp.get("exp_annotations", {})) == {
                    "summary", "description", "runbook_url"
                }, (t["name"], case["alertname"])
    assert firing == set(names), f"alerts never shown firing: {set(names) - firing}"
    assert quiet == set(names), f"alerts never shown quiet: {set(names) - quiet}"


def test_operations_guide_links_resolve():
    """docs/operations.md's links to its own sections and to files of the repository."""
    text = OPERATIONS.read_text()
    anchors = github_anchors(text)
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    assert links
    for link in links:
        if link.startswith(("http://", "https://")):
            continue
        path, _, anchor = link.partition("#")
        if path:
            assert (OPERATIONS.parent / path).exists(), f"link to a missing file: {link}"
        else:
            assert anchor in anchors, f"link to a missing section: {link}"


# -- dashboard --------------------------------------------------------------------------------


def test_dashboard_is_plain_grafana_json_with_unique_ids_and_queries_on_every_panel():
    text = DASHBOARD.read_text()
    # Embedded by Helm (.Files.Get) and mounted as is: no template syntax of any kind.
    assert "{{" not in text and "}}" not in text, "template syntax in the dashboard"
    dashboard = json.loads(text)
    assert dashboard["schemaVersion"] >= 39
    assert dashboard["uid"] and dashboard["title"]
    assert "id" not in dashboard or dashboard["id"] is None, "a dashboard id pins it to one Grafana"

    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    ds = variables.get("datasource")
    assert ds and ds["type"] == "datasource" and ds["query"] == "prometheus", ds
    for name in ("job", "instance"):
        assert variables.get(name, {}).get("type") == "query", f"no {name} variable"
    for v in variables.values():
        if v["type"] == "query":
            assert v["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, v["name"]

    panels = dashboard_panels(dashboard)
    ids = [p["id"] for p in panels]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    assert not duplicates, f"duplicate panel ids: {duplicates}"
    rows = [p["title"] for p in panels if p["type"] == "row"]
    assert rows == DASHBOARD_ROWS, rows

    cells: dict[tuple[int, int], int] = {}
    for p in panels:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0, (p["id"], g)
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"panels {cells[(x, y)]} and {p['id']} overlap"
                cells[(x, y)] = p["id"]
        if p["type"] == "row":
            continue
        where = f"panel {p['id']} {p.get('title')!r}"
        assert p.get("title"), where
        assert p.get("datasource") == {"type": "prometheus", "uid": "${datasource}"}, where
        targets = p.get("targets") or []
        assert targets, f"{where} has no queries"
        refs = [t["refId"] for t in targets]
        assert len(set(refs)) == len(refs), where
        for t in targets:
            assert t.get("expr", "").strip(), where
            assert t.get("datasource") == p["datasource"], where


def test_dashboard_queries_are_valid_promql(tmp_path):
    """promtool parses every query (with Grafana's variables filled in) as the expression
    of a recording rule."""
    dashboard = load_dashboard()
    queries = dashboard_queries(dashboard)
    assert len(queries) >= 40, len(queries)
    rules = [
        {"record": f"dashboard:query_{i}", "expr": interpolate(expr)}
        for i, (_, expr) in enumerate(queries)
    ]
    for where, query in dashboard_variable_queries(dashboard):
        if m := re.fullmatch(r"label_values\((.*),\s*\w+\s*\)", query.strip(), re.S):
            rules.append(
                {"record": f"dashboard:variable_{len(rules)}", "expr": interpolate(m.group(1))}
            )
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    check = run_promtool("check", "rules", str(path))
    assert check.returncode == 0, f"promtool check rules:\n{check.stdout}\n{check.stderr}"


def test_every_queried_metric_is_documented():
    documented = set(re.findall(r"^\| `(strata_[a-z0-9_]+)` \|", METRICS_DOC.read_text(), re.M))
    assert len(documented) > 50, "docs/metrics.md's tables were not found"
    undocumented = {}
    for name, where in queried_metrics().items():
        if name in SCRAPE_SERIES:
            continue
        family = re.sub(r"_(bucket|sum|count)$", "", name)
        if name not in documented and family not in documented:
            undocumented[name] = where
    assert not undocumented, (
        "metrics queried by the dashboard or the alerts that docs/metrics.md does not list:\n"
        + "\n".join(f"  {n}: {w[:3]}" for n, w in sorted(undocumented.items()))
    )


# -- a live cluster -----------------------------------------------------------------------------


def _exposed(text: str) -> set[str]:
    return {name for name, _, _ in parse_metrics(text)}


def _total(cluster, name: str, **labels: str) -> float:
    return sum(sum(metric_values(cluster.metrics(i), name, **labels)) for i in cluster.nodes)


def test_every_queried_metric_exists_on_a_live_cluster(cluster_factory):
    """A 3-node cluster gets a little of everything the dashboard shows, then every
    metric name the dashboard and the alerts query must be on some node's /metrics."""
    wanted = queried_metrics()
    assert {"strata_objstore_topic_requests_total", "strata_objstore_topic_bytes_total"} <= set(
        wanted
    ), "the dashboard shows the per-topic object-store cost"
    unknown_scrape = {n for n in wanted if not n.startswith("strata_")}
    assert unknown_scrape <= SCRAPE_SERIES, f"non-Strata metrics queried: {unknown_scrape}"

    # Retention runs every 500 ms, so uploaded segments leave the local disk at once and
    # reading from offset 0 goes to the object store through the block cache.
    c = cluster_factory(env={"STRATA_KAFKA_LOG_RETENTION_CHECK_INTERVAL_MS": "500"})
    topic = unique("observed")
    c.create_topic(topic, 2, rf=3, **{"segment.bytes": "16384", "local.retention.bytes": "0"})

    # Produce: requests, latencies, bytes, end offsets, fsyncs, replication, segments.
    p = Producer({
        "bootstrap.servers": c.bootstrap,
        "acks": "all",
        "linger.ms": 5,
        "batch.size": 8192,
    })
    records = 400
    for i in range(records):
        p.produce(topic, value=b"%06d" % i + b"x" * 994, partition=i % 2)
    assert p.flush(30) == 0, "records not delivered"

    # An error answer (TOPIC_ALREADY_EXISTS) and a connection closed for a bad frame.
    admin = AdminClient({"bootstrap.servers": c.bootstrap})
    with pytest.raises(Exception, match="TOPIC_ALREADY_EXISTS|already exists"):
        admin.create_topics([NewTopic(topic, 2, 3)])[topic].result(timeout=30)
    node = next(n for n in c.nodes.values() if n.broker)
    with socket.create_connection((node.host, node.kafka_port), timeout=5) as s:
        s.sendall(b"\xff\xff\xff\xff")  # a negative frame size
        s.settimeout(5)
        try:
            s.recv(1)
        except OSError:
            pass

    # Sealed segments go to the object store; reads from the start come back from it.
    wait_until(lambda: _total(c, "strata_tier_uploads_total") >= 4, 30, "segment uploads", 0.5)

    def read_back_from_store():
        consume_all(c, topic, {0: records // 2, 1: records // 2}, timeout=30)
        return _total(c, "strata_tier_read_bytes_total", source="object_store") > 0

    wait_until(read_back_from_store, 30, "a read served from the object store", 1.0)

    expositions: dict[int, str] = {}

    def all_present():
        expositions.update({i: c.metrics(i) for i in c.nodes})
        exposed = set().union(*(_exposed(t) for t in expositions.values()))
        missing = {n for n in wanted if n not in exposed and n not in SCRAPE_SERIES}
        return not missing

    # Gauges refreshed on a timer (lag, unuploaded bytes) may take a moment.
    deadline = time.monotonic() + 5
    while not all_present() and time.monotonic() < deadline:
        time.sleep(0.5)

    for i, text in expositions.items():
        lint = run_promtool("check", "metrics", stdin=text)
        assert lint.returncode == 0 and not (lint.stdout + lint.stderr).strip(), (
            f"promtool check metrics on node {i}:\n{lint.stdout}\n{lint.stderr}"
        )
    exposed = set().union(*(_exposed(t) for t in expositions.values()))
    missing = {n: w for n, w in wanted.items() if n not in exposed and n not in SCRAPE_SERIES}
    assert not missing, (
        "metrics the dashboard or the alerts query that no node of a live cluster exposes:\n"
        + "\n".join(
            f"  {n} (queried by {', '.join(sorted(set(w))[:3])})" for n, w in sorted(missing.items())
        )
    )
