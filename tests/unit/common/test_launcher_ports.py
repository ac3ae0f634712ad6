"""The launcher's port plan: fixed offsets from --base-port, or distinct free ports."""

from __future__ import annotations

from services.launcher import build_stack_argv
from services.up_options import parse_args

ONE_EACH = ["--num-gateways", "1", "--num-tokenizers", "1"]


def _ports(argv: list[str]) -> list[int]:
    return [int(argv[i + 1]) for i, flag in enumerate(argv) if flag in ("--port", "--status-port", "--http-port")]


def test_a_base_port_gives_each_stage_its_fixed_offset() -> None:
    stages = build_stack_argv(parse_args(["--base-port", "41000", "--http-port", "0", "--num-workers", "2", *ONE_EACH]), "/m")
    assert [(s.name, s.grpc_address) for s in stages] == [
        ("worker0", "127.0.0.1:41003"), ("worker1", "127.0.0.1:41004"), ("scheduler", "127.0.0.1:41002"),
        ("tokenizer", "127.0.0.1:41001"), ("gateway", "127.0.0.1:41000")]
    assert _ports(stages[0].argv) == [41003, 41103]
    assert _ports(stages[-1].argv) == [41000, 41100]
    assert stages[2].argv[stages[2].argv.index("--workers") + 1] == "127.0.0.1:41003,127.0.0.1:41004"


def test_free_ports_are_all_distinct() -> None:
    for _ in range(20):
        stages = build_stack_argv(parse_args(["--base-port", "0", "--http-port", "0", "--num-workers", "3", *ONE_EACH]), "/m")
        ports = [p for s in stages for p in _ports(s.argv)]
        assert len(ports) == 12  # gRPC + status of 3 workers, scheduler, tokenizer; the gateway's gRPC + HTTP
        assert len(set(ports)) == len(ports)


def test_gateway_replicas_share_the_public_ports_and_reach_every_tokenizer() -> None:
    args = ["--base-port", "41000", "--http-port", "8123", "--num-gateways", "3", "--num-tokenizers", "2"]
    stages = build_stack_argv(parse_args(args), "/m")
    assert [(s.name, s.grpc_address) for s in stages] == [
        ("worker0", "127.0.0.1:41003"), ("scheduler", "127.0.0.1:41002"), ("tokenizer0", "127.0.0.1:41001"),
        ("tokenizer1", "127.0.0.1:41004"), ("gateway0", "127.0.0.1:41000"), ("gateway1", "127.0.0.1:41000"),
        ("gateway2", "127.0.0.1:41000")]
    for gateway in stages[-3:]:
        assert _ports(gateway.argv) == [41000, 8123]
        assert "--reuse-port" in gateway.argv
        assert gateway.argv[gateway.argv.index("--tokenizers") + 1] == "127.0.0.1:41001,127.0.0.1:41004"
    assert _ports(stages[3].argv) == [41004, 41104]


def test_one_gateway_does_not_share_its_ports() -> None:
    stages = build_stack_argv(parse_args(["--base-port", "41000", *ONE_EACH]), "/m")
    assert "--reuse-port" not in stages[-1].argv


def test_an_embedding_model_gets_its_own_worker_scheduler_and_tokenizer_behind_the_one_gateway() -> None:
    args = parse_args(["--base-port", "41000", "--http-port", "0", "--embedding-model", "/e",
                       "--embedding-model-id", "minilm", "--load-format", "fake", *ONE_EACH])
    stages = {s.name: s for s in build_stack_argv(args, "/m")}
    assert list(stages) == ["worker0", "scheduler", "tokenizer", "embedding-worker", "embedding-scheduler",
                            "embedding-tokenizer", "gateway"]
    assert stages["embedding-worker"].argv[:7] == ["worker", "--host", "127.0.0.1", "--port", "41050",
                                                   "--status-port", "41150"]
    assert "--load-format auto --model-id minilm" in " ".join(stages["embedding-worker"].argv)
    assert stages["embedding-scheduler"].argv[-2:] == ["--workers", "127.0.0.1:41050"]
    assert stages["embedding-tokenizer"].argv[-4:] == ["--scheduler", "127.0.0.1:41051", "--model", "/e"]
    gateway = stages["gateway"].argv
    assert gateway[gateway.index("--tokenizers") + 1] == "127.0.0.1:41001,127.0.0.1:41052"
