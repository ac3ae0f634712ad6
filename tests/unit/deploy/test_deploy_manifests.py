"""The Dockerfile, docker-compose.yml and deploy/k8s agree with the code they run.

Every container command goes through the real parser and config builder of `flashstream serve STAGE`, with
the container's environment, so a flag, a variable or a port that the code does not know fails here rather
than in a cluster. No docker or kubectl needed.
"""

from __future__ import annotations

import contextlib
import fnmatch
import importlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import pytest
import yaml

import services.demo
from services.cli import main as cli_main
from services.common.errors import InvalidArgument
from services.stages import STAGE_MAINS

ROOT = Path(__file__).resolve().parents[3]
K8S = ROOT / "deploy" / "k8s"
STAGES = ("gateway", "tokenizer", "scheduler", "worker")
DEMO_DIR = "/models/flashstream-demo"
POD_IP = "10.0.0.7"  # stands for status.podIP in the Kubernetes containers' environment


@dataclass(frozen=True)
class Container:
    """One stage container as a manifest runs it: where it is declared, its argv after `flashstream`, its env."""

    where: str  # "compose" or "k8s"
    name: str  # compose service or Deployment name
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]

    @property
    def stage(self) -> str:
        return self.argv[1]

    def config(self, env: dict[str, str] | None = None):  # noqa: ANN201 - each stage has its own config type
        return build_stage_config(self.stage, list(self.argv[2:]), dict(self.env) if env is None else env)


@contextlib.contextmanager
def stage_environment(env: dict[str, str]) -> Iterator[None]:
    """Exactly the container's FLASHSTREAM_* variables, whatever the test process has."""
    kept = {k: v for k, v in os.environ.items() if not k.startswith("FLASHSTREAM_")}
    with mock.patch.dict(os.environ, {**kept, **env}, clear=True):
        yield


def build_stage_config(stage: str, argv: list[str], env: dict[str, str]):  # noqa: ANN201
    """The config `flashstream serve STAGE argv` builds in its main(); parsers read the environment when built."""
    module = importlib.import_module(STAGE_MAINS[stage])
    with stage_environment(env):
        return module.build_config(argv)


def grpc_port(config) -> int:  # noqa: ANN001
    return config.server.port


def health_port(config) -> int:  # noqa: ANN001
    """Where the stage serves /metrics, /health and /ready: the gateway on its HTTP API port."""
    return config.http_port if hasattr(config, "http_port") else config.server.status_port


# The addresses each stage dials, as its config holds them.
UPSTREAMS = {"gateway": lambda c: c.tokenizers + ((c.tokenizer_service,) if c.tokenizer_service else ()),
             "tokenizer": lambda c: (c.scheduler,),
             "scheduler": lambda c: c.workers + ((c.worker_service,) if c.worker_service else ()),
             "worker": lambda c: ()}


# --- loading -------------------------------------------------------------------------------------------------

def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def k8s_documents() -> list[dict]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return [doc for path in kustomization["resources"]
            for doc in yaml.safe_load_all((K8S / path).read_text()) if doc]


# The keys of each Secret the manifests reference, with stand-in values.
SECRETS = {"flashstream-internal-token": {"FLASHSTREAM_INTERNAL_TOKEN": "a-secret"}}


def k8s_objects(kind: str) -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for doc in k8s_documents() if doc["kind"] == kind}


def pod_container(deployment: dict) -> dict:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def k8s_env(container: dict) -> dict[str, str]:
    config_maps = k8s_objects("ConfigMap")
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "secretRef" in source:  # created by the operator (networkpolicy.yaml says how), not in the folder
            env.update(SECRETS[source["secretRef"]["name"]])
            continue
        env.update(config_maps[source["configMapRef"]["name"]]["data"])
    for item in container.get("env", []):
        if "valueFrom" in item:  # the kubelet fills these in; the tests stand in an address for the pod's
            assert item["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}, item
            env[item["name"]] = POD_IP
        else:
            env[item["name"]] = item["value"]
    return env


def compose_containers() -> list[Container]:
    services = compose()["services"]
    return [Container("compose", name, tuple(services[name]["command"]),
                      tuple(sorted((k, str(v)) for k, v in services[name].get("environment", {}).items())))
            for name in STAGES]


def k8s_containers() -> list[Container]:
    deployments = k8s_objects("Deployment")
    return [Container("k8s", name, tuple(pod_container(deployments[name])["args"]),
                      tuple(sorted(k8s_env(pod_container(deployments[name])).items())))
            for name in STAGES]


ALL_CONTAINERS = compose_containers() + k8s_containers()


def container_id(container: Container) -> str:
    return f"{container.where}-{container.name}"


def k8s_port_number(container: dict, port: int | str) -> int:
    """A probe's or Service's target port: a number, or the name of one of the container's ports."""
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container["ports"] if p["name"] == port]
    return number


def k8s_service_target(address: str) -> tuple[str, int]:
    """host:port of a Service → (Deployment behind it, the container port the Service forwards to)."""
    host, port = address.rsplit(":", 1)
    service = k8s_objects("Service")[host]
    (deployment,) = [d for d in k8s_objects("Deployment").values()
                     if service["spec"]["selector"].items() <= d["spec"]["template"]["metadata"]["labels"].items()]
    (service_port,) = [p for p in service["spec"]["ports"] if p["port"] == int(port)]
    return deployment["metadata"]["name"], k8s_port_number(pod_container(deployment), service_port["targetPort"])


# --- image -------------------------------------------------------------------------------------------------

def test_the_image_runs_the_flashstream_console_script_as_a_numeric_non_root_user() -> None:
    lines = [line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines()]
    instructions = [line for line in lines if line and not line.startswith("#")]
    assert instructions[0] == "FROM python:3.12-slim"
    assert 'RUN pip install "/src[tracing]" && rm -rf /src' in instructions  # the package with OTLP export
    (user,) = [line.split()[1] for line in instructions if line.startswith("USER ")]
    assert user == "10001"
    (entrypoint,) = [line for line in instructions if line.startswith("ENTRYPOINT ")]
    assert json.loads(entrypoint.removeprefix("ENTRYPOINT ")) == ["flashstream"]
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'flashstream = "services.cli:main"' in pyproject
    # The pods' runAsUser is the image's user, so files the image owns (/models) stay writable.
    for deployment in (k8s_objects("Deployment")[name] for name in STAGES):
        assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == int(user)


def test_the_build_context_leaves_out_the_virtualenv_caches_bench_output_and_checkpoints() -> None:
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    assert {".venv", ".git", "**/__pycache__", "bench/results", "bench/scratch",
            "**/*.safetensors", "**/*.bin"} <= set(patterns)

    def ignored(path: str) -> bool:
        return any(fnmatch.fnmatch(path, p) or fnmatch.fnmatch(path, p.removeprefix("**/"))
                   or path.startswith(p + "/") for p in patterns)

    # What `pip install .` reads must stay in.
    for needed in ("pyproject.toml", "README.md", "services/cli.py", "services/demo/corpus.txt", "gateway/server.py",
                   "kernels/rms_norm.py", "services/worker/models/decoder.py",
                   "protos/flashstream/v1/worker_pb2.py"):
        assert not ignored(needed), needed


# --- every stage container, compose and k8s alike ----------------------------------------------------------

@pytest.mark.parametrize("container", ALL_CONTAINERS, ids=container_id)
def test_each_stage_command_is_accepted_by_flashstream_serve_and_listens_where_others_reach_it(
        container: Container) -> None:
    assert container.argv[0] == "serve"
    assert container.stage == container.name
    # argparse also takes a prefix of a flag (--worker for --workers): manifests spell each one out.
    parser = importlib.import_module(STAGE_MAINS[container.stage]).build_parser()
    known = {option for action in parser._actions for option in action.option_strings}
    assert [arg for arg in container.argv[2:] if arg.startswith("--") and arg not in known] == []
    config = container.config()
    # 127.0.0.1, the code's default, would refuse every other container and the health probes. On Kubernetes the
    # internal stages bind to the pod network only; the public gateway listens everywhere.
    internal = container.where == "k8s" and container.stage != "gateway"
    assert config.server.host == (POD_IP if internal else "0.0.0.0")


@pytest.mark.parametrize("container", ALL_CONTAINERS, ids=container_id)
def test_every_environment_variable_of_a_stage_container_changes_that_stage_config(container: Container) -> None:
    env = dict(container.env)
    assert env, "every stage container sets at least FLASHSTREAM_HOST"
    for name in env:
        without = {k: v for k, v in env.items() if k != name}
        try:
            baseline = container.config(without)
        except InvalidArgument:  # the stage refuses to start without it, so it reads it
            continue
        changed = False
        # The manifest's value, else values of other types, in case the manifest repeats the code's default.
        for value in (env[name], "12345", "host-x:12345"):
            try:
                changed = container.config({**without, name: value}) != baseline
            except (InvalidArgument, SystemExit):  # not a value this variable accepts
                continue
            if changed:
                break
        assert changed, f"{container.stage} ignores {name}"


def wiring(containers: list[Container]) -> dict[str, tuple[str, ...]]:
    return {c.stage: UPSTREAMS[c.stage](c.config()) for c in containers}


def test_compose_stages_dial_their_upstream_by_service_name_and_real_grpc_port() -> None:
    containers = compose_containers()
    assert wiring(containers) == {"gateway": ("tokenizer:50051",), "tokenizer": ("scheduler:50052",),
                                  "scheduler": ("worker:50053",), "worker": ()}
    ports = {c.stage: grpc_port(c.config()) for c in containers}
    assert ports == {"gateway": 50050, "tokenizer": 50051, "scheduler": 50052, "worker": 50053}
    services = compose()["services"]
    for addresses in wiring(containers).values():
        for address in addresses:
            host, port = address.rsplit(":", 1)
            assert host in services
            assert int(port) == ports[host]


def test_k8s_stages_dial_a_service_that_forwards_to_the_upstream_container_grpc_port() -> None:
    containers = k8s_containers()
    assert wiring(containers) == {"gateway": ("tokenizer:50051",), "tokenizer": ("scheduler:50052",),
                                  "scheduler": ("worker:50053",), "worker": ()}
    ports = {c.stage: grpc_port(c.config()) for c in containers}
    for addresses in wiring(containers).values():
        for address in addresses:
            deployment, container_port = k8s_service_target(address)
            assert container_port == ports[deployment]


def test_the_gateway_finds_redis_by_its_service_name_and_port() -> None:
    (compose_gateway,) = [c for c in compose_containers() if c.stage == "gateway"]
    (k8s_gateway,) = [c for c in k8s_containers() if c.stage == "gateway"]
    assert compose_gateway.config().result_cache.redis_url == "redis://redis:6379/0"
    assert k8s_gateway.config().result_cache.redis_url == "redis://redis:6379/0"
    assert "--port" not in compose()["services"]["redis"]["command"]  # so Redis listens on its default 6379
    assert k8s_service_target("redis:6379") == ("redis", 6379)


# --- docker compose --------------------------------------------------------------------------------------

def compose_health_url(service: dict) -> tuple[int, str]:
    (url,) = re.findall(r"http://127\.0\.0\.1:(\d+)(/\w+)", " ".join(service["healthcheck"]["test"]))
    return int(url[0]), url[1]


def seconds(duration: str) -> int:
    number, unit = re.fullmatch(r"(\d+)(s|m)", duration).groups()
    return int(number) * (60 if unit == "m" else 1)


@pytest.mark.parametrize("container", compose_containers(), ids=container_id)
def test_compose_health_checks_ask_ready_on_the_port_the_stage_serves_status_on(container: Container) -> None:
    assert compose_health_url(compose()["services"][container.name]) == (health_port(container.config()), "/ready")


def test_compose_starts_each_stage_once_the_stage_it_dials_is_ready() -> None:
    services = compose()["services"]
    depends = {name: {dep: cond["condition"] for dep, cond in services[name]["depends_on"].items()}
               for name in STAGES}
    assert depends == {
        "worker": {"demo-model": "service_completed_successfully", "internal-certs": "service_completed_successfully"},
        "scheduler": {"worker": "service_healthy"},
        "tokenizer": {"demo-model": "service_completed_successfully", "scheduler": "service_healthy"},
        "gateway": {"tokenizer": "service_healthy", "redis": "service_started"},
    }
    assert services["redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]


@pytest.mark.parametrize("container", compose_containers(), ids=container_id)
def test_compose_stop_grace_period_outlasts_the_stage_drain_timeout(container: Container) -> None:
    grace = seconds(compose()["services"][container.name]["stop_grace_period"])
    assert grace == 40
    assert grace > container.config().server.drain_timeout_s == 30.0


def built_demo_dirs(argv: list[str]) -> list[str]:
    """Runs `flashstream <argv>` through the real CLI, recording where it would build the demo model."""
    built: list[str] = []
    with mock.patch.object(services.demo, "build_demo_model", lambda out, force=False: built.append(out) or out):
        assert cli_main(argv) == 0
    return built


def test_compose_builds_the_demo_model_into_the_volume_folder_tokenizer_and_worker_load(
        capsys: pytest.CaptureFixture[str]) -> None:
    services = compose()["services"]
    assert built_demo_dirs(services["demo-model"]["command"]) == [DEMO_DIR]
    configs = {c.stage: c.config() for c in compose_containers()}
    assert configs["tokenizer"].model_dir == configs["worker"].model == DEMO_DIR
    assert configs["worker"].model_id == "flashstream-demo"
    assert services["demo-model"]["volumes"] == ["models:/models"]
    assert "models:/models:ro" in services["tokenizer"]["volumes"] and "models:/models:ro" in services["worker"][
        "volumes"]
    assert "models" in compose()["volumes"]


def written_cert_dirs(argv: list[str]) -> list[str]:
    """Runs `flashstream <argv>` through the real CLI, recording where it would write the internal certificates."""
    import services.common.internal_tls as internal_tls

    written: list[str] = []
    with mock.patch.object(internal_tls, "write_stack_certs", lambda out, days: written.append(str(out)) or out):
        assert cli_main(argv) == 0
    return written


def test_compose_writes_the_internal_certificates_once_where_every_stage_reads_them_read_only(
        capsys: pytest.CaptureFixture[str]) -> None:
    services = compose()["services"]
    job = services["internal-certs"]
    (folder,) = written_cert_dirs(job["command"])
    assert (job["volumes"], job["network_mode"]) == ([f"internal-tls:{folder}"], "none")
    for container in compose_containers():
        assert container.config().server.internal_tls_dir == folder, container.name
        assert f"internal-tls:{folder}:ro" in services[container.name]["volumes"], container.name
    assert "internal-tls" in compose()["volumes"]


def test_compose_worker_reserves_one_nvidia_gpu_and_uses_the_cuda_image() -> None:
    worker = compose()["services"]["worker"]
    assert worker["deploy"]["resources"]["reservations"]["devices"] == [
        {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert worker["build"]["args"] == {"TORCH_INDEX_URL": "https://download.pytorch.org/whl/cu130",
                                       "WITH_C_COMPILER": "1"}


# --- kubernetes ------------------------------------------------------------------------------------------

def test_the_kustomization_lists_every_manifest_in_the_folder() -> None:
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    on_disk = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(listed) == on_disk


def test_k8s_has_a_deployment_and_a_service_per_stage_and_for_redis() -> None:
    expected = {*STAGES, "redis"}
    assert set(k8s_objects("Deployment")) == expected
    assert set(k8s_objects("Service")) == expected
    assert set(k8s_objects("ConfigMap")) == {"flashstream-stage-env", "flashstream-model-env"}


@pytest.mark.parametrize("container", k8s_containers(), ids=container_id)
def test_k8s_probes_ask_ready_and_health_on_the_port_the_stage_serves_status_on(container: Container) -> None:
    pod = pod_container(k8s_objects("Deployment")[container.name])
    port = health_port(container.config())
    readiness, liveness = pod["readinessProbe"]["httpGet"], pod["livenessProbe"]["httpGet"]
    assert (readiness["path"], k8s_port_number(pod, readiness["port"])) == ("/ready", port)
    assert (liveness["path"], k8s_port_number(pod, liveness["port"])) == ("/health", port)


@pytest.mark.parametrize("container", k8s_containers(), ids=container_id)
def test_k8s_prometheus_annotations_point_at_the_stage_metrics_port(container: Container) -> None:
    annotations = k8s_objects("Deployment")[container.name]["spec"]["template"]["metadata"]["annotations"]
    assert annotations == {"prometheus.io/scrape": "true", "prometheus.io/port": str(health_port(container.config())),
                           "prometheus.io/path": "/metrics"}


@pytest.mark.parametrize("container", k8s_containers(), ids=container_id)
def test_k8s_services_expose_exactly_the_ports_the_stage_listens_on(container: Container) -> None:
    config = container.config()
    pod = pod_container(k8s_objects("Deployment")[container.name])
    listening = {grpc_port(config), health_port(config)}
    assert {p["containerPort"] for p in pod["ports"]} == listening
    service = k8s_objects("Service")[container.name]
    assert {k8s_port_number(pod, p["targetPort"]) for p in service["spec"]["ports"]} == listening
    assert {p["port"] for p in service["spec"]["ports"]} == listening  # clients dial the same numbers


@pytest.mark.parametrize("container", k8s_containers(), ids=container_id)
def test_k8s_termination_grace_outlasts_the_stage_drain_timeout(container: Container) -> None:
    grace = k8s_objects("Deployment")[container.name]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace == 45
    assert grace > container.config().server.drain_timeout_s == 30.0


def test_k8s_every_container_requests_cpu_and_memory_and_the_worker_one_gpu() -> None:
    for name, deployment in k8s_objects("Deployment").items():
        requests = pod_container(deployment)["resources"]["requests"]
        assert {"cpu", "memory"} <= set(requests), name
    worker = pod_container(k8s_objects("Deployment")["worker"])["resources"]
    assert worker["requests"]["nvidia.com/gpu"] == worker["limits"]["nvidia.com/gpu"] == 1


def test_k8s_scheduler_runs_one_pod_replaced_never_rolled_and_workers_roll_one_at_a_time() -> None:
    # Two schedulers at once would both allocate the same workers' KV blocks; a worker pod frees its GPU before
    # its replacement needs it.
    deployments = k8s_objects("Deployment")
    assert deployments["scheduler"]["spec"]["replicas"] == 1
    assert deployments["scheduler"]["spec"]["strategy"] == {"type": "Recreate"}
    assert deployments["worker"]["spec"]["strategy"] == {
        "type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}


def test_k8s_the_scheduler_and_the_gateways_follow_the_headless_worker_and_tokenizer_services() -> None:
    configs = {c.stage: c.config() for c in k8s_containers()}
    assert (configs["scheduler"].workers, configs["scheduler"].worker_service) == ((), "worker:50053")
    assert (configs["gateway"].tokenizers, configs["gateway"].tokenizer_service) == ((), "tokenizer:50051")
    services = k8s_objects("Service")
    assert services["worker"]["spec"]["clusterIP"] == services["tokenizer"]["spec"]["clusterIP"] == "None"


def test_k8s_gateways_autoscale_on_cpu_and_workers_on_the_scheduler_queue() -> None:
    hpas = k8s_objects("HorizontalPodAutoscaler")
    assert set(hpas) == {"gateway", "worker"}
    for name, hpa in hpas.items():
        assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
    assert hpas["gateway"]["spec"]["minReplicas"] == k8s_objects("Deployment")["gateway"]["spec"]["replicas"] == 2
    (metric,) = hpas["worker"]["spec"]["metrics"]
    assert metric["external"]["metric"] == {"name": "flashstream_num_requests_waiting",
                                            "selector": {"matchLabels": {"stage": "scheduler"}}}
    adapter = yaml.safe_load((ROOT / "deploy/prometheus-adapter/values.yaml").read_text())
    (rule,) = adapter["rules"]["external"]
    assert rule["name"]["as"] == "flashstream_num_requests_waiting"


@pytest.mark.parametrize("container", k8s_containers(), ids=container_id)
def test_k8s_every_stage_mounts_the_internal_tls_secret_read_only_where_its_config_reads_it(
        container: Container) -> None:
    spec = k8s_objects("Deployment")[container.name]["spec"]["template"]["spec"]
    (mount,) = [m for m in pod_container(k8s_objects("Deployment")[container.name])["volumeMounts"]
                if m["name"] == "internal-tls"]
    assert (mount["mountPath"], mount["readOnly"]) == (container.config().server.internal_tls_dir, True)
    (volume,) = [v for v in spec["volumes"] if v["name"] == "internal-tls"]
    assert volume["secret"] == {"secretName": "flashstream-internal-tls", "defaultMode": 0o440}
    assert spec["securityContext"]["fsGroup"] == spec["securityContext"]["runAsUser"]  # the key is group-readable


@pytest.mark.parametrize("name", ["tokenizer", "worker"])
def test_k8s_init_container_builds_the_demo_model_where_the_stage_loads_it(
        name: str, capsys: pytest.CaptureFixture[str]) -> None:
    spec = k8s_objects("Deployment")[name]["spec"]["template"]["spec"]
    (init,) = spec["initContainers"]
    assert init["image"] == pod_container(k8s_objects("Deployment")[name])["image"]
    assert built_demo_dirs(init["args"]) == [DEMO_DIR]
    (container,) = [c for c in k8s_containers() if c.name == name]
    config = container.config()
    assert (config.model_dir if name == "tokenizer" else config.model) == DEMO_DIR
    mounts = {m["name"]: m["mountPath"] for m in pod_container(k8s_objects("Deployment")[name])["volumeMounts"]}
    assert mounts["models"] == {m["name"]: m["mountPath"] for m in init["volumeMounts"]}["models"] == "/models"
