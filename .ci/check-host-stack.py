#!/usr/bin/env python3
"""Checks packaging/host-stack: every YAML file parses; the compose file has
the services and ports the agent's discovery and `probe` expect (Loki 3100,
OTLP 4317/4318, Tempo 3200, Prometheus 9090, Grafana 3000), pinned images and
mounts that exist; the collector's pipelines are wired (OTLP logs the agent
already stored in Loki, `x-wisp-logs-in-loki: true`, never reach the Loki
exporter); Prometheus takes OTLP; Grafana's datasources and dashboard provider
point where compose puts things. With `docker-compose` on PATH, also
`docker-compose config` (CI installs it from Debian: Compose v1, which checks
the file against the Compose schema; it knows no top-level `name:`).

What each dashboard query names is checked by tests/host_stack.rs against the
running agent. Needs PyYAML (Debian: python3-yaml). Exit 0 when all holds, 1
with every problem listed otherwise.
"""

import json
import os
import re
import shutil
import subprocess
import sys

import yaml

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
STACK = os.path.join(ROOT, "packaging", "host-stack")

# service -> the container ports it must publish on the same host port.
PORTS = {
    "loki": {3100},
    "otel-collector": {4317, 4318},
    "tempo": {3200},
    "prometheus": {9090},
    "grafana": {3000},
}

problems = []


def problem(msg):
    problems.append(msg)


def load(rel):
    path = os.path.join(STACK, rel)
    try:
        with open(path, encoding="utf-8") as f:
            return yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        problem(f"{rel}: {e}")
        return None


def every_yaml_parses():
    count = 0
    for dirpath, _, files in os.walk(STACK):
        for name in sorted(files):
            if not name.endswith((".yaml", ".yml")):
                continue
            path = os.path.join(dirpath, name)
            count += 1
            try:
                with open(path, encoding="utf-8") as f:
                    docs = list(yaml.safe_load_all(f))
            except yaml.YAMLError as e:
                problem(f"{os.path.relpath(path, ROOT)} does not parse: {e}")
                continue
            if not docs or docs[0] is None:
                problem(f"{os.path.relpath(path, ROOT)} is empty")
    for dirpath, _, files in os.walk(STACK):
        for name in sorted(files):
            if name.endswith(".json"):
                path = os.path.join(dirpath, name)
                try:
                    with open(path, encoding="utf-8") as f:
                        json.load(f)
                except ValueError as e:
                    problem(f"{os.path.relpath(path, ROOT)} does not parse: {e}")
    if count < 6:
        problem(f"only {count} YAML files under packaging/host-stack")


def published(port_spec):
    """(host port, container port) of a compose port string such as
    "${WISP_STACK_BIND:-0.0.0.0}:3100:3100" or "3100:3100/tcp"."""
    spec = str(port_spec)
    spec = re.sub(r"\$\{[^}]*\}", "ADDR", spec).split("/")[0]
    parts = spec.split(":")
    if len(parts) < 2:
        return None
    try:
        return int(parts[-2]), int(parts[-1])
    except ValueError:
        return None


def check_compose():
    compose = load("compose.yaml")
    if not isinstance(compose, dict):
        problem("compose.yaml: not a mapping")
        return {}
    services = compose.get("services") or {}
    for name, ports in PORTS.items():
        svc = services.get(name)
        if not isinstance(svc, dict):
            problem(f"compose.yaml: no service {name}")
            continue
        have = {p for p in map(published, svc.get("ports") or []) if p}
        for port in ports:
            if (port, port) not in have:
                problem(f"compose.yaml: {name} does not publish {port}:{port} (has {sorted(have)})")
    for name, svc in services.items():
        image = (svc or {}).get("image", "")
        tag = image.rsplit(":", 1)[1] if ":" in image.split("/")[-1] else ""
        if not tag or tag == "latest":
            problem(f"compose.yaml: {name}'s image {image!r} is not pinned to a version")
        for vol in (svc or {}).get("volumes") or []:
            src = str(vol).split(":")[0]
            if src.startswith("./") and not os.path.exists(os.path.join(STACK, src)):
                problem(f"compose.yaml: {name} mounts {src}, which does not exist")
    prom_cmd = (services.get("prometheus") or {}).get("command") or []
    if "--web.enable-otlp-receiver" not in prom_cmd:
        problem("compose.yaml: prometheus must run with --web.enable-otlp-receiver (the collector pushes to it)")
    return services


def mounted_at(services, service, source):
    for vol in (services.get(service) or {}).get("volumes") or []:
        parts = str(vol).split(":")
        if parts[0] == source and len(parts) > 1:
            return parts[1]
    return None


def check_collector(services):
    cfg = load("otelcol/config.yaml")
    if not isinstance(cfg, dict):
        return
    if mounted_at(services, "otel-collector", "./otelcol/config.yaml") is None:
        problem("compose.yaml: the collector does not mount otelcol/config.yaml")
    otlp = (cfg.get("receivers") or {}).get("otlp") or {}
    for proto, port in (("grpc", 4317), ("http", 4318)):
        p = (otlp.get("protocols") or {}).get(proto) or {}
        if not str(p.get("endpoint", "")).endswith(f":{port}"):
            problem(f"otelcol: the otlp receiver's {proto} endpoint is not :{port}")
        if p.get("include_metadata") is not True:
            problem(f"otelcol: the otlp receiver's {proto} protocol needs include_metadata: true (the routing reads headers)")
    components = {}
    for kind in ("receivers", "processors", "exporters", "connectors"):
        components[kind] = set((cfg.get(kind) or {}).keys())
    connectors = components["connectors"]
    pipelines = ((cfg.get("service") or {}).get("pipelines")) or {}
    for name, p in pipelines.items():
        for kind in ("receivers", "processors", "exporters"):
            for c in p.get(kind) or []:
                allowed = components[kind] | (connectors if kind != "processors" else set())
                if c not in allowed:
                    problem(f"otelcol: pipeline {name} uses {kind[:-1]} {c}, which is not defined")
    for signal in ("traces", "metrics", "logs"):
        if signal not in pipelines:
            problem(f"otelcol: no {signal} pipeline")

    def exporters_of(pipeline):
        return set((pipelines.get(pipeline) or {}).get("exporters") or [])

    def loki_exporters(names):
        out = set()
        for e in names:
            conf = (cfg.get("exporters") or {}).get(e) or {}
            if "loki:3100" in str(conf.get("endpoint", "")):
                out.add(e)
        return out

    routing = {n: c for n, c in (cfg.get("connectors") or {}).items() if n.split("/")[0] == "routing"}
    logs_in = exporters_of("logs")
    used = [n for n in routing if n in logs_in]
    if len(used) != 1 or (pipelines.get("logs") or {}).get("processors"):
        problem("otelcol: the logs pipeline must go straight (no processor: batching drops request metadata) to one routing connector")
        return
    route = routing[used[0]] or {}
    marked = [
        t for t in route.get("table") or []
        if t.get("context") == "request"
        and re.fullmatch(r'\s*request\["x-wisp-logs-in-loki"\]\s*==\s*"true"\s*', str(t.get("condition", "")))
    ]
    if not marked:
        problem('otelcol: no route with context request and condition request["x-wisp-logs-in-loki"] == "true"')
    for t in marked:
        for p in t.get("pipelines") or []:
            if loki_exporters(exporters_of(p)):
                problem(f"otelcol: logs marked x-wisp-logs-in-loki reach a Loki exporter through {p}: they would be in Loki twice")
            if used[0] not in ((pipelines.get(p) or {}).get("receivers") or []):
                problem(f"otelcol: pipeline {p} does not receive from {used[0]}")
    defaults = route.get("default_pipelines") or []
    if not any(loki_exporters(exporters_of(p)) for p in defaults):
        problem("otelcol: other logs (default_pipelines) do not reach Loki's OTLP endpoint")
    for e, conf in (cfg.get("exporters") or {}).items():
        ep = str((conf or {}).get("endpoint", ""))
        if "loki:3100" in ep and not ep.rstrip("/").endswith("/otlp"):
            problem(f"otelcol: exporter {e} must point at Loki's /otlp")
        if "prometheus:9090" in ep and not ep.rstrip("/").endswith("/api/v1/otlp"):
            problem(f"otelcol: exporter {e} must point at Prometheus's /api/v1/otlp")
    if not any("prometheus:9090" in str((c or {}).get("endpoint", "")) for e, c in (cfg.get("exporters") or {}).items() if e in exporters_of("metrics")):
        problem("otelcol: metrics do not reach Prometheus")
    if not any("tempo:4317" in str((c or {}).get("endpoint", "")) for e, c in (cfg.get("exporters") or {}).items() if e in exporters_of("traces")):
        problem("otelcol: traces do not reach Tempo")


def check_backends():
    prom = load("prometheus/prometheus.yaml") or {}
    otlp = prom.get("otlp") or {}
    if otlp.get("translation_strategy") != "UnderscoreEscapingWithSuffixes":
        problem("prometheus.yaml: otlp.translation_strategy must be UnderscoreEscapingWithSuffixes (README and tests/host_stack.rs translate names so)")
    if "host.name" not in (otlp.get("promote_resource_attributes") or []):
        problem("prometheus.yaml: host.name must be promoted (the dashboards' host_name)")
    loki = load("loki/config.yaml") or {}
    if (loki.get("server") or {}).get("http_listen_port") != 3100:
        problem("loki/config.yaml: http_listen_port is not 3100")
    if (loki.get("limits_config") or {}).get("allow_structured_metadata") is not True:
        problem("loki/config.yaml: allow_structured_metadata must be true (trace_id, span_id)")
    schemas = (loki.get("schema_config") or {}).get("configs") or []
    if not schemas or schemas[-1].get("schema") != "v13" or schemas[-1].get("store") != "tsdb":
        problem("loki/config.yaml: structured metadata needs the tsdb store with schema v13")
    tempo = load("tempo/config.yaml") or {}
    if (tempo.get("server") or {}).get("http_listen_port") != 3200:
        problem("tempo/config.yaml: http_listen_port is not 3200")
    grpc = ((((tempo.get("distributor") or {}).get("receivers") or {}).get("otlp") or {}).get("protocols") or {}).get("grpc") or {}
    if str(grpc.get("endpoint", "")) != "0.0.0.0:4317":
        problem("tempo/config.yaml: the OTLP gRPC receiver must listen on 0.0.0.0:4317 (the collector is another container)")


def check_grafana(services):
    ds = load("grafana/provisioning/datasources/datasources.yaml") or {}
    by_uid = {d.get("uid"): d for d in ds.get("datasources") or []}
    want = {"loki": ("loki", "http://loki:3100"), "tempo": ("tempo", "http://tempo:3200"),
            "prometheus": ("prometheus", "http://prometheus:9090")}
    for uid, (typ, url) in want.items():
        d = by_uid.get(uid)
        if not d:
            problem(f"datasources.yaml: no datasource uid {uid}")
            continue
        if d.get("type") != typ or d.get("url") != url:
            problem(f"datasources.yaml: {uid} must be type {typ} at {url}")
    loki = (by_uid.get("loki") or {}).get("jsonData") or {}
    derived = [f for f in loki.get("derivedFields") or []
               if f.get("matcherType") == "label" and f.get("matcherRegex") == "trace_id" and f.get("datasourceUid") == "tempo"]
    if not derived:
        problem("datasources.yaml: Loki needs a derived field on the trace_id structured metadata (matcherType: label) linking to tempo")
    t2l = ((by_uid.get("tempo") or {}).get("jsonData") or {}).get("tracesToLogsV2") or {}
    if t2l.get("datasourceUid") != "loki":
        problem("datasources.yaml: Tempo's tracesToLogsV2 must point at loki")
    tags = {t.get("key"): t.get("value") for t in t2l.get("tags") or []}
    if tags.get("service.name") != "job":
        problem("datasources.yaml: tracesToLogsV2 must map service.name to the Loki label job")
    # `$$` is a literal `$` in a provisioning file.
    if 'trace_id="$${__trace.traceId}"' not in str(t2l.get("query", "")):
        problem('datasources.yaml: tracesToLogsV2 query must filter | trace_id="$${__trace.traceId}" (structured metadata)')
    prov = load("grafana/provisioning/dashboards/dashboards.yaml") or {}
    paths = [((p.get("options") or {}).get("path")) for p in prov.get("providers") or []]
    target = mounted_at(services, "grafana", "./grafana/dashboards")
    if target is None or target not in paths:
        problem(f"dashboards.yaml: no provider reads {target}, where compose mounts grafana/dashboards")
    if mounted_at(services, "grafana", "./grafana/provisioning") != "/etc/grafana/provisioning":
        problem("compose.yaml: grafana/provisioning must be mounted at /etc/grafana/provisioning")
    home = ((services.get("grafana") or {}).get("environment") or {}).get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH", "")
    if target and home and not os.path.exists(os.path.join(STACK, "grafana/dashboards", os.path.relpath(home, target))):
        problem(f"compose.yaml: the home dashboard {home} is not in grafana/dashboards")


def compose_config():
    tool = shutil.which("docker-compose")
    if not tool:
        print("check-host-stack: docker-compose not installed: `docker-compose config` skipped")
        return
    r = subprocess.run([tool, "-f", os.path.join(STACK, "compose.yaml"), "config", "-q"],
                       capture_output=True, text=True, cwd=STACK)
    if r.returncode != 0:
        problem(f"docker-compose config: {r.stderr.strip() or r.stdout.strip()}")


def main():
    every_yaml_parses()
    services = check_compose()
    check_collector(services)
    check_backends()
    check_grafana(services)
    compose_config()
    if problems:
        for p in problems:
            print(f"check-host-stack: {p}", file=sys.stderr)
        return 1
    print("check-host-stack: packaging/host-stack parses; services, ports, pipelines and datasources as expected")
    return 0


if __name__ == "__main__":
    sys.exit(main())
