"""`flashstream up`: runs every stage as a child process on one machine and supervises them.

Children are started in pipeline order (workers, scheduler, tokenizer, gateway), each once the one it
dials reports SERVING. Between them every call carries a fresh internal token and, unless --no-internal-tls,
travels over mutual TLS with a throwaway CA and certificate made for the run (removed when it stops). They die
with the launcher (PR_SET_PDEATHSIG on Linux, which each stage asks for as it starts), so even a killed launcher
leaves no orphan; on Ctrl-C or SIGTERM the launcher stops them in reverse order.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from services.common.errors import FlashStreamError, InvalidArgument, Unavailable
from services.common.internal_tls import TLS_CHANNEL_OPTIONS, InternalTls, load_internal_tls, write_stack_certs
from services.common.stage import LAUNCHER_PID_VARIABLE
from services.port_check import PortTaken, describe_taken, is_free, port_owner
from services.stages import stage_parser
from services.supervisor import Supervisor
from services.up_options import parse_args, resolve_model

if TYPE_CHECKING:
    import grpc

INTERNAL_TOKEN_VARIABLE = "FLASHSTREAM_INTERNAL_TOKEN"
INTERNAL_TLS_VARIABLE = "FLASHSTREAM_INTERNAL_TLS_DIR"


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


def stage_channel(address: str, tls: InternalTls | None = None) -> grpc.Channel:
    """A blocking channel to a stage: mutual TLS with tls's certificates (an internal stage of a stack that has
    them), plaintext without."""
    import grpc

    if tls is None:
        return grpc.insecure_channel(address)
    return grpc.secure_channel(address, tls.channel_credentials(), options=TLS_CHANNEL_OPTIONS)


def wait_serving(address: str, timeout_s: float, proc: subprocess.Popen | None = None,
                 tls: InternalTls | None = None) -> None:
    """Blocks until the gRPC health service at address reports SERVING (raises Unavailable on timeout)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout_s
    with stage_channel(address, tls) as channel:
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
class ChildStage:
    """One stage of `flashstream up`: its command line, its gRPC address and, once started, its child process."""

    name: str
    argv: list[str]
    grpc_address: str
    proc: subprocess.Popen | None = None

    @property
    def is_worker(self) -> bool:
        return self.argv[0] == "worker"


@dataclass
class Stack:
    """The running stages of one `up`, in start order."""

    stages: list[ChildStage] = field(default_factory=list)
    gateway_grpc: str = ""
    gateway_http: str = ""
    env: dict[str, str] = field(default_factory=dict)  # the children's environment
    log_dir: Path | None = None
    made_tls_dir: Path | None = None  # the throwaway certificates of this run, removed on stop

    @property
    def internal_tls(self) -> InternalTls | None:
        """The certificates the internal stages require of each other's connections (None: plaintext)."""
        return load_internal_tls(self.env.get(INTERNAL_TLS_VARIABLE, ""))

    def tls_of(self, stage: ChildStage) -> InternalTls | None:
        """The certificates a stage's gRPC port asks for: the internal ones, but none on a gateway's public port."""
        return None if stage.argv[0] == "gateway" else self.internal_tls

    def internal_channel(self, address: str) -> grpc.Channel:
        """A blocking channel to one of this stack's internal stages, with the stack's certificate when it has one."""
        return stage_channel(address, self.internal_tls)

    @property
    def internal_token(self) -> str:
        """The secret the stages require of each other's calls."""
        return self.env.get(INTERNAL_TOKEN_VARIABLE, "")

    def spawn(self, stage: ChildStage) -> None:
        """Starts the stage's process (again, for a restart), its output appended to its log."""
        out = None
        if self.log_dir is not None:
            out = open(self.log_dir / f"{stage.name}.log", "ab")  # noqa: SIM115 - handed to the child
        cmd = [sys.executable, "-m", "services.cli", "serve", *stage.argv]
        # No preexec_fn: the stage asks to die with the launcher itself (services.common.stage.die_with_launcher).
        env = {**self.env, LAUNCHER_PID_VARIABLE: str(os.getpid())}
        stage.proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT if out else None)

    def start(self, stage: ChildStage, env: dict[str, str], ready_timeout_s: float, log_dir: Path | None) -> None:
        self.env, self.log_dir = env, log_dir
        started = time.monotonic()
        self.spawn(stage)
        self.stages.append(stage)
        try:
            wait_serving(stage.grpc_address, ready_timeout_s, stage.proc, self.tls_of(stage))
        except Unavailable as exc:
            where = ""
            if log_dir is not None:  # the stage's own message went to its log, not to this terminal
                log_file = log_dir / f"{stage.name}.log"
                last = [line for line in log_file.read_text(errors="replace").splitlines() if line.strip()][-1:]
                where = f" ({log_file}: {last[0].strip()})" if last else f" (see {log_file})"
            raise type(exc)(f"{stage.name}: {exc.message}{where}") from exc
        port = int(stage.grpc_address.rsplit(":", 1)[1])
        owner = port_owner(port)
        ours = {s.proc.pid for s in self.stages if s.proc is not None}  # gateway replicas share their ports
        if owner is not None and owner.pid not in ours:
            raise PortTaken(f"{stage.name}'s port {port} answers from another process ({owner}), not from the "
                            f"{stage.name} this command started")
        print(f"{stage.name} ready on {stage.grpc_address} in {time.monotonic() - started:.1f} s", flush=True)

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
        if self.made_tls_dir is not None:
            shutil.rmtree(self.made_tls_dir, ignore_errors=True)
            self.made_tls_dir = None


def build_stack_argv(args: argparse.Namespace, model_dir: str) -> list[ChildStage]:
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

    stages: list[ChildStage] = []
    for i in range(args.num_workers):
        addr, flags = address(3 + i)
        argv = ["worker", *flags, "--model", model_dir, "--device", args.device, "--load-format", args.load_format]
        argv += ["--model-id", args.model_id] if args.model_id else []
        stages.append(ChildStage(f"worker{i}", argv + shlex.split(args.worker_args), addr))
    workers = ",".join(s.grpc_address for s in stages)
    addr, flags = address(2)
    scheduler_argv = ["scheduler", *flags, "--workers", workers, *shlex.split(args.scheduler_args)]
    stages.append(ChildStage("scheduler", scheduler_argv, addr))
    scheduler = addr
    tokenizers = []
    for i in range(args.num_tokenizers):
        # The first tokenizer keeps base+1; more take ports past the workers'.
        addr, flags = address(1 if i == 0 else 3 + args.num_workers + i - 1)
        name = "tokenizer" if args.num_tokenizers == 1 else f"tokenizer{i}"
        stages.append(ChildStage(name, ["tokenizer", *flags, "--scheduler", scheduler, "--model", model_dir,
                                   *shlex.split(args.tokenizer_args)], addr))
        tokenizers.append(addr)
    if args.embedding_model:
        # An embedding model beside the generation one: its own worker, scheduler and tokenizer at base+50..52;
        # the gateway routes by model name.
        folder = str(Path(args.embedding_model).resolve())
        addr, flags = address(50)
        stages.append(ChildStage("embedding-worker", ["worker", *flags, "--model", folder, "--device", args.device,
                                                 "--load-format", "dummy" if args.load_format == "dummy" else "auto",
                                                 *(["--model-id", args.embedding_model_id]
                                                   if args.embedding_model_id else [])], addr))
        worker = addr
        addr, flags = address(51)
        stages.append(ChildStage("embedding-scheduler", ["scheduler", *flags, "--workers", worker], addr))
        scheduler = addr
        addr, flags = address(52)
        stages.append(ChildStage("embedding-tokenizer", ["tokenizer", *flags, "--scheduler", scheduler, "--model",
                                                    folder], addr))
        tokenizers.append(addr)
    gateway_port = port(0)
    http_port = args.http_port or port(100)  # the gateway serves its status routes on this port, not +100
    # Several gateways share the public ports (SO_REUSEPORT), each with a stream to every tokenizer.
    shared = ["--reuse-port"] if args.num_gateways > 1 else []
    for i in range(args.num_gateways):
        name = "gateway" if args.num_gateways == 1 else f"gateway{i}"
        stages.append(ChildStage(name, ["gateway", "--host", host, "--port", str(gateway_port), "--http-port",
                                   str(http_port), "--tokenizers", ",".join(tokenizers), *shared,
                                   *shlex.split(args.gateway_args)], f"{host}:{gateway_port}"))
    return stages


# With ports picked here (--base-port 0) another process may bind one before the stage does; such a start is
# retried with fresh ports this many times in all.
NUM_FREE_PORT_ATTEMPTS = 3


def stage_ports(stage: ChildStage) -> list[tuple[int, str]]:
    """(port, what) of every port a stage's command line binds (0: the OS picks, nothing to check)."""
    out = []
    for flag, what in (("--port", "gRPC"), ("--status-port", "status HTTP"), ("--http-port", "HTTP API")):
        if flag in stage.argv:
            port = int(stage.argv[stage.argv.index(flag) + 1])
            if port:
                out.append((port, f"{stage.name} {what}"))
    return out


def check_ports(host: str, stages: list[ChildStage]) -> None:
    """Raises PortTaken naming every port of the stack that something already holds, before anything starts."""
    ports = dict(reversed([p for stage in stages for p in stage_ports(stage)]))  # a shared port once, first name
    taken = [describe_taken(host, port, what) for port, what in ports.items() if not is_free(host, port)]
    if taken:
        raise PortTaken("; ".join(taken) + ". Stop that process, or choose other ports with --base-port and "
                        "--http-port (0: free ports)")


def _ports_taken(stack: Stack) -> bool:
    """Whether a port of a stage that failed to start is now held by another process."""
    return any(s.proc is not None and s.proc.poll() is not None and
               any(not is_free(_host_of(s), p) for p, _ in stage_ports(s)) for s in stack.stages)


def _host_of(stage: ChildStage) -> str:
    return stage.grpc_address.rsplit(":", 1)[0]


def check_stage_flags(stages: list[ChildStage]) -> None:
    """Parses every stage's command line with that stage's own parser, so a bad pass-through flag is refused
    before anything starts (argparse prints its usage line and error; InvalidArgument carries the rest)."""
    for stage in stages:
        kind, argv = stage.argv[0], stage.argv[1:]
        errors = io.StringIO()
        try:
            with contextlib.redirect_stderr(errors):
                stage_parser(kind).parse_args(argv)
        except SystemExit as exc:
            reason = errors.getvalue().strip().splitlines()[-1:] or ["bad flags"]
            raise InvalidArgument(f"--{kind}-args: {reason[0]}") from exc


def start_stack(args: argparse.Namespace, model_dir: str, log_dir: Path | None = None) -> Stack:
    """Starts every stage and waits for each to report SERVING; on failure stops what started and raises."""
    env = python_path_env()
    # The internal stages accept only calls that carry this run's token (one given in the environment is kept);
    # it travels in the environment, not on command lines that `ps` shows.
    env[INTERNAL_TOKEN_VARIABLE] = env.get(INTERNAL_TOKEN_VARIABLE) or secrets.token_urlsafe(32)
    # Mutual TLS between the stages: certificates given in the environment are kept, else a throwaway CA and
    # certificate are made for this run.
    made_tls_dir = None
    if args.internal_tls and not env.get(INTERNAL_TLS_VARIABLE):
        folder = Path(tempfile.mkdtemp(prefix="flashstream-tls-"))
        try:
            made_tls_dir = write_stack_certs(folder)
        except InvalidArgument as exc:
            shutil.rmtree(folder, ignore_errors=True)
            raise InvalidArgument(f"{exc.message}, or start the stack with --no-internal-tls") from exc
        env[INTERNAL_TLS_VARIABLE] = str(made_tls_dir)
    elif not args.internal_tls:
        env.pop(INTERNAL_TLS_VARIABLE, None)
    attempts = 1 if args.base_port else NUM_FREE_PORT_ATTEMPTS
    try:
        for attempt in range(1, attempts + 1):
            stack = Stack()
            stages = build_stack_argv(args, model_dir)
            check_ports(args.host, stages)
            try:
                for stage in stages:
                    print(f"starting {stage.name} on {stage.grpc_address} ...", flush=True)
                    stack.start(stage, env, args.ready_timeout_s, log_dir)
                break
            except Unavailable as exc:
                stack.stop()
                # Only a port that another process took between choosing it and binding it is worth a retry.
                if attempt == attempts or not (isinstance(exc, PortTaken) or _ports_taken(stack)):
                    raise
                print(f"{exc.message}; retrying with other free ports", flush=True)
            except BaseException:
                stack.stop()
                raise
    except BaseException:
        if made_tls_dir is not None:
            shutil.rmtree(made_tls_dir, ignore_errors=True)
        raise
    stack.made_tls_dir = made_tls_dir
    gateway = stack.stages[-1]  # every gateway listens on the same ports
    http_port = gateway.argv[gateway.argv.index("--http-port") + 1]
    stack.gateway_grpc, stack.gateway_http = gateway.grpc_address, f"http://{args.host}:{http_port}"
    return stack


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    stack = Stack()

    def on_signal(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        model_dir = resolve_model(args)
        if args.dry_run:
            stages = build_stack_argv(args, model_dir)
            check_stage_flags(stages)
            check_ports(args.host, stages)
            for stage in stages:
                print(f"{stage.name}: flashstream serve {shlex.join(stage.argv)}")
            return 0
        check_stage_flags(build_stack_argv(args, model_dir))
        log_dir = Path(args.log_dir) if args.log_dir else None
        if log_dir:
            log_dir.mkdir(parents=True, exist_ok=True)
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
        supervisor = Supervisor(stack, say=lambda line: print(line, file=sys.stderr, flush=True))
        while (reason := supervisor.check()) is None:
            time.sleep(0.25)
        print(reason, file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        return 0
    except FlashStreamError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stack.stop()
