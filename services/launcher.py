"""`flashstream up`: runs every stage as a child process on one machine and supervises them.

Children are started in pipeline order (workers, scheduler, tokenizer, gateway), each once the one it
dials reports SERVING. They die with the launcher (PR_SET_PDEATHSIG on Linux), so even a killed
launcher leaves no orphan; on Ctrl-C or SIGTERM the launcher stops them in reverse order.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from services.common.config import env_default
from services.common.errors import FlashStreamError, Unavailable

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Runs in the child before exec: ask the kernel to SIGTERM it when the launcher dies."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass  # not Linux: the launcher's own handlers still stop the children


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def python_path_env() -> dict[str, str]:
    """The environment for children: this process's, plus the folders holding our packages."""
    import flashstream
    import services

    roots = [str(Path(services.__file__).resolve().parent.parent),
             str(Path(flashstream.__file__).resolve().parent.parent)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys([*roots, *filter(None, [env.get("PYTHONPATH")])]))
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def wait_serving(address: str, timeout_s: float, proc: subprocess.Popen | None = None) -> None:
    """Blocks until the gRPC health service at address reports SERVING (raises Unavailable on timeout)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise Unavailable(f"stage at {address} exited with code {proc.returncode} before it was ready")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise Unavailable(f"stage at {address} did not report SERVING within {timeout_s:.0f} s")


@dataclass
class Stage:
    name: str
    argv: list[str]
    grpc_address: str
    proc: subprocess.Popen | None = None


@dataclass
class Stack:
    """The running stages of one `up`, in start order."""

    stages: list[Stage] = field(default_factory=list)
    gateway_grpc: str = ""
    gateway_http: str = ""

    def start(self, stage: Stage, env: dict[str, str], ready_timeout_s: float, log_dir: Path | None) -> None:
        out = None
        if log_dir is not None:
            out = open(log_dir / f"{stage.name}.log", "ab")  # noqa: SIM115 - handed to the child
        cmd = [sys.executable, "-m", "services.cli", "serve", *stage.argv]
        stage.proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT if out else None,
                                      preexec_fn=_die_with_parent)
        self.stages.append(stage)
        wait_serving(stage.grpc_address, ready_timeout_s, stage.proc)

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM in reverse start order (each drains), then SIGKILL whatever is left."""
        for stage in reversed(self.stages):
            if stage.proc and stage.proc.poll() is None:
                stage.proc.send_signal(signal.SIGTERM)
                try:
                    stage.proc.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    stage.proc.kill()
                    stage.proc.wait()

    def first_exited(self) -> Stage | None:
        return next((s for s in self.stages if s.proc and s.proc.poll() is not None), None)


def build_stack_argv(args: argparse.Namespace, model_dir: str) -> list[Stage]:
    """The stages' command lines, workers first. With --base-port B: gateway B, tokenizer B+1, scheduler B+2,
    worker i B+3+i, and their HTTP status ports 100 higher; with 0, free ports everywhere."""
    host = args.host
    chosen: set[int] = set()

    def port(offset: int) -> int:
        if args.base_port:
            return args.base_port + offset
        while (picked := free_port(host)) in chosen:  # the OS may hand a just-released port out again
            pass
        chosen.add(picked)
        return picked

    def address(offset: int) -> tuple[str, list[str]]:
        grpc_port = port(offset)
        return f"{host}:{grpc_port}", ["--host", host, "--port", str(grpc_port), "--status-port", str(port(offset + 100))]

    stages: list[Stage] = []
    for i in range(args.num_workers):
        addr, flags = address(3 + i)
        argv = ["worker", *flags, "--model", model_dir, "--device", args.device, "--load-format", args.load_format]
        argv += ["--model-id", args.model_id] if args.model_id else []
        stages.append(Stage(f"worker{i}", argv + shlex.split(args.worker_args), addr))
    workers = ",".join(s.grpc_address for s in stages)
    addr, flags = address(2)
    stages.append(Stage("scheduler", ["scheduler", *flags, "--workers", workers, *shlex.split(args.scheduler_args)],
                        addr))
    scheduler = addr
    tokenizers = []
    for i in range(args.num_tokenizers):
        # The first tokenizer keeps base+1; more take ports past the workers'.
        addr, flags = address(1 if i == 0 else 3 + args.num_workers + i - 1)
        name = "tokenizer" if args.num_tokenizers == 1 else f"tokenizer{i}"
        stages.append(Stage(name, ["tokenizer", *flags, "--scheduler", scheduler, "--model", model_dir,
                                   *shlex.split(args.tokenizer_args)], addr))
        tokenizers.append(addr)
    gateway_port = port(0)
    http_port = args.http_port or port(100)  # the gateway serves its status routes on this port, not +100
    # Several gateways share the public ports (SO_REUSEPORT), each with a stream to every tokenizer.
    shared = ["--reuse-port"] if args.num_gateways > 1 else []
    for i in range(args.num_gateways):
        name = "gateway" if args.num_gateways == 1 else f"gateway{i}"
        stages.append(Stage(name, ["gateway", "--host", host, "--port", str(gateway_port), "--http-port",
                                   str(http_port), "--tokenizers", ",".join(tokenizers), *shared,
                                   *shlex.split(args.gateway_args)], f"{host}:{gateway_port}"))
    return stages


# With ports picked here (--base-port 0) another process may bind one before the stage does; such a start is
# retried with fresh ports this many times in all.
NUM_FREE_PORT_ATTEMPTS = 3


def start_stack(args: argparse.Namespace, model_dir: str, log_dir: Path | None = None) -> Stack:
    """Starts every stage and waits for each to report SERVING; on failure stops what started and raises."""
    env = python_path_env()
    attempts = 1 if args.base_port else NUM_FREE_PORT_ATTEMPTS
    for attempt in range(1, attempts + 1):
        stack = Stack()
        try:
            for stage in build_stack_argv(args, model_dir):
                print(f"starting {stage.name} on {stage.grpc_address} ...", flush=True)
                stack.start(stage, env, args.ready_timeout_s, log_dir)
            break
        except Unavailable as exc:
            stack.stop()
            if attempt == attempts:
                raise
            print(f"{exc.message}; retrying with other free ports", flush=True)
        except BaseException:
            stack.stop()
            raise
    gateway = stack.stages[-1]  # every gateway listens on the same ports
    http_port = gateway.argv[gateway.argv.index("--http-port") + 1]
    stack.gateway_grpc, stack.gateway_http = gateway.grpc_address, f"http://{args.host}:{http_port}"
    return stack


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="flashstream up", description="Start the whole stack on this machine.")
    parser.add_argument("--model", default=env_default("model", ""),
                        help="Hugging Face checkpoint folder (default: the demo model, built on first use)")
    parser.add_argument("--model-id", default=env_default("model_id", ""), help="name clients use for the model")
    parser.add_argument("--host", default=env_default("host", "127.0.0.1"))
    parser.add_argument("--base-port", type=int, default=env_default("base_port", 50050),
                        help="gateway gRPC port; other stages take base+1.. (0: free ports)")
    parser.add_argument("--http-port", type=int, default=env_default("gateway_http_port", 8000))
    parser.add_argument("--num-workers", type=int, default=env_default("num_workers", 1))
    parser.add_argument("--num-gateways", type=int, default=env_default("num_gateways", 0),
                        help="gateway processes sharing the public ports (0: one per 4 CPU cores, at most 4)")
    parser.add_argument("--num-tokenizers", type=int, default=env_default("num_tokenizers", 0),
                        help="tokenizer processes (0: one per 8 CPU cores, at most 2)")
    parser.add_argument("--device", default=env_default("device", "auto"), help="auto, cpu or cuda")
    parser.add_argument("--load-format", default=env_default("load_format", "auto"),
                        choices=["auto", "dummy", "fake"])
    for stage in ("worker", "scheduler", "tokenizer", "gateway"):
        parser.add_argument(f"--{stage}-args", default="", help=f"extra flags for every {stage}, e.g. '--max-num-seqs 64'")
    parser.add_argument("--ready-timeout-s", type=float, default=600.0)
    parser.add_argument("--log-dir", default=None, help="write each stage's output to DIR/<stage>.log")
    parser.add_argument("--prompt", default="Once upon a time",
                        help="stream one answer to this prompt once the stack is up ('' to skip)")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--exit-after-prompt", action="store_true", help="stop the stack after the first answer")
    args = parser.parse_args(list(argv))
    if args.num_workers < 1:
        parser.error("--num-workers must be at least 1")
    for name in ("num_gateways", "num_tokenizers"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must be 0 (automatic) or more")
    # One Python process serves one core: past a few thousand streamed tokens per second the gateway (SSE) and the
    # tokenizer (detokenization) need more processes than one, where there are cores for them.
    cores = os.cpu_count() or 1
    args.num_gateways = args.num_gateways or max(1, min(4, cores // 4))
    args.num_tokenizers = args.num_tokenizers or max(1, min(2, cores // 8))
    return args


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    if args.model:
        model_dir = str(Path(args.model).resolve())
    else:
        from services.demo import DEMO_MODEL_ID, build_demo_model

        print("building the demo model (first run only) ...", flush=True)
        model_dir = str(build_demo_model())
        args.model_id = args.model_id or DEMO_MODEL_ID
    log_dir = Path(args.log_dir) if args.log_dir else None
    if log_dir:
        log_dir.mkdir(parents=True, exist_ok=True)
    stack = Stack()

    def on_signal(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        stack = start_stack(args, model_dir, log_dir)
        print(f"\nFlashStream is up ({len(stack.stages)} processes, model {args.model_id or model_dir})\n"
              f"  gRPC   {stack.gateway_grpc}   (flashstream.v1.Gateway)\n"
              f"  HTTP   {stack.gateway_http}/v1/completions   (OpenAI-compatible)\n"
              f"  status {stack.gateway_http}/metrics  /health  /ready\n", flush=True)
        if args.prompt:
            from services.generate_client import stream_to_terminal

            stream_to_terminal(stack.gateway_grpc, args.prompt, max_tokens=args.max_tokens, model="")
        if args.exit_after_prompt:
            return 0
        print("Ctrl-C stops every stage.", flush=True)
        while True:
            exited = stack.first_exited()
            if exited is not None:
                print(f"{exited.name} exited with code {exited.proc.returncode}; stopping", file=sys.stderr)
                return 1
            time.sleep(0.5)
    except KeyboardInterrupt:
        return 0
    except FlashStreamError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stack.stop()
