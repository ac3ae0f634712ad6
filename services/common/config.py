"""Helpers to build a stage's configuration from CLI flags and FLASHSTREAM_* variables, in main() only."""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

from services.common.errors import InvalidArgument

T = TypeVar("T", int, float, str, bool)
C = TypeVar("C")

# Longest wait between two attempts to reach a lost stage, in every reconnect loop and in gRPC channels.
MAX_RECONNECT_BACKOFF_S = 2.0


@dataclass(frozen=True)
class BackoffConfig:
    """Delays between attempts to reach a lost stage: initial, doubled per failure, capped."""

    initial_s: float = 0.1
    max_s: float = MAX_RECONNECT_BACKOFF_S

    def __post_init__(self) -> None:
        if not 0 < self.initial_s <= self.max_s:
            raise InvalidArgument(f"backoff needs 0 < initial_s <= max_s, got {self.initial_s} and {self.max_s}")


# Default ports of a one-machine deployment, as `flashstream up` lays them out at its default base port (each
# status port is its gRPC port + 100) and as docker-compose.yml and deploy/k8s use them.
DEFAULT_PORTS = {
    "gateway": (50050, 8000),  # (gRPC, HTTP: OpenAI API, /metrics, /health, /ready)
    "tokenizer": (50051, 50151),  # (gRPC, HTTP status)
    "scheduler": (50052, 50152),
    "worker": (50053, 50153),
}


_BOOL_WORDS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}


def env_default(name: str, default: T, environ: Mapping[str, str] | None = None) -> T:
    """FLASHSTREAM_<NAME> converted to the type of `default`, or `default` when unset."""
    env = os.environ if environ is None else environ
    raw = env.get(f"FLASHSTREAM_{name.upper()}")
    if raw is None or raw == "":
        return default
    try:
        if isinstance(default, bool):
            return _BOOL_WORDS[raw.strip().lower()]  # type: ignore[return-value]
        return type(default)(raw)
    except KeyError as exc:
        raise InvalidArgument(f"FLASHSTREAM_{name.upper()}={raw!r} is not a valid bool (1 or 0, true or false, yes "
                              "or no, on or off)") from exc
    except ValueError as exc:
        raise InvalidArgument(f"FLASHSTREAM_{name.upper()}={raw!r} is not a valid {type(default).__name__}") from exc


def option(default: Any, help: str, *, name: str = "", env: str = "", choices: Sequence[str] | None = None,
           type: Callable[[str], Any] | None = None, show: Callable[[Any], str] | None = None,
           metavar: str | None = None) -> Any:
    """A config field that is also the flag --<name> and the variable FLASHSTREAM_<NAME> (FLASHSTREAM_<ENV> when
    env is given), which gives the flag's default. name: the field's own unless given; type: parses the text of
    the flag and of the variable (the default's type unless given); show: writes a value as that text, for the
    default that --help prints (str unless given). A bool without a type becomes --<name>/--no-<name>."""
    return field(default=default, metadata={"help": help, "name": name, "env": env, "choices": choices,
                                            "type": type, "show": show, "metavar": metavar})


def csv_tuple(text: str) -> tuple[str, ...]:
    """'a, b,c' → ('a', 'b', 'c'): the text of a flag that takes several values."""
    return tuple(split_csv(text))


def csv_option(default: str, help: str, *, name: str = "") -> Any:
    """A tuple[str, ...] field whose flag and variable take its items comma-separated (default: that text)."""
    return option(csv_tuple(default), help, name=name, type=csv_tuple, show=",".join)


def on_off(text: str) -> bool:
    """'on' → True, 'off' → False: the text of a switch spelled as a word (--result-cache off)."""
    if text not in ("on", "off"):
        raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from 'on', 'off')")
    return text == "on"


def on_off_option(default: bool, help: str, *, name: str = "") -> Any:
    """A bool field whose flag and variable take on or off."""
    return option(default, help, name=name, type=on_off, show=lambda value: "on" if value else "off",
                  metavar="{on,off}")


def service_option(replicas: str) -> Any:
    """The field of a stage's --<next>-service flag: a DNS name whose addresses are more of `replicas`."""
    return option("", f"host:port whose DNS addresses are {replicas} too (e.g. a Kubernetes headless Service), "
                      f"resolved again every --discovery-interval-s: {replicas} join and leave at run time")


def _options(config: Any) -> list[tuple[str, Any]]:
    """(option name, field) of each option() field of config (a config or its class)."""
    return [(f.metadata["name"] or f.name, f) for f in fields(config) if "help" in f.metadata]


def flag_of(config: Any, field_name: str) -> str:
    """The flag of an option() field of config (a config or its class), for messages: --<name>."""
    (name,) = [name for name, f in _options(config) if f.name == field_name]
    return _flag(name)


def _flag(name: str) -> str:
    return f"--{name.replace('_', '-')}"


def _env_text(name: str, parse: Callable[[str], Any]) -> str | None:
    """FLASHSTREAM_<NAME> when set, checked to parse, so that a wrong value names its variable."""
    variable = f"FLASHSTREAM_{name.upper()}"
    raw = os.environ.get(variable)
    if raw is None or raw == "":
        return None
    try:
        parse(raw)
    except (ValueError, argparse.ArgumentTypeError) as exc:
        what = "on or off" if parse is on_off else f"a valid {getattr(parse, '__name__', 'value')}"
        raise InvalidArgument(f"{variable}={raw!r} is not {what}") from exc
    return raw


def add_options(parser: argparse.ArgumentParser, config_cls: type, group: str = "") -> None:
    """Adds a flag for each option() field of config_cls (under the heading `group` in --help, when given), its
    default read from its FLASHSTREAM_* variable."""
    flags = parser.add_argument_group(group) if group else parser
    for name, f in _options(config_cls):
        meta = f.metadata
        flag = _flag(name)
        if isinstance(f.default, bool) and meta["type"] is None:
            flags.add_argument(flag, action=argparse.BooleanOptionalAction, help=meta["help"],
                               default=env_default(meta["env"] or name, f.default))
            continue
        parse = meta["type"] or type(f.default)
        # A text default is parsed by argparse like the flag's own text, and --help prints it as it is typed.
        text = _env_text(meta["env"] or name, parse)
        flags.add_argument(flag, type=parse, choices=meta["choices"], metavar=meta["metavar"], help=meta["help"],
                           default=(meta["show"] or str)(f.default) if text is None else text)


def config_from_args(config_cls: type[C], args: argparse.Namespace, **values: Any) -> C:
    """config_cls from the flags add_options added, plus `values` for its other fields."""
    values.update({f.name: getattr(args, name) for name, f in _options(config_cls)})
    return config_cls(**values)


@dataclass(frozen=True)
class ServerConfig:
    """Where a stage listens and how it stops."""

    host: str = option("127.0.0.1", "address to listen on")
    # The ports' flags and variables are named after the stage, and the secret's default must not show in --help:
    # add_server_args declares these three.
    port: int = 0
    status_port: int = 0  # HTTP /metrics, /health, /ready; 0 disables
    internal_token: str = field(default="", repr=False)  # the internal stages' shared secret ("": none)
    log_level: str = option("INFO", "logging level", choices=("DEBUG", "INFO", "WARNING", "ERROR"), type=str.upper)
    drain_timeout_s: float = option(30.0, "on SIGTERM, how long running requests may finish before the stage stops")
    internal_tls_dir: str = option(
        "", "folder with ca.crt, tls.crt and tls.key (a mounted Kubernetes TLS Secret): the internal stages serve "
            "mutual TLS and every stage dials them with this certificate ('': plaintext)")
    otlp_endpoint: str = option(
        "", "OTLP gRPC collector (e.g. http://otel-collector:4317) that receives a span per request from this "
            "stage; empty: no tracing (needs the tracing extra)")

    def __post_init__(self) -> None:
        for name in ("port", "status_port"):
            value = getattr(self, name)
            if not 0 <= value <= 65535:
                raise InvalidArgument(f"{name} must be in [0, 65535], got {value}")
        if self.drain_timeout_s < 0:
            raise InvalidArgument(f"drain_timeout_s must be non-negative, got {self.drain_timeout_s}")

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Every command's help: each option with its default (after FLASHSTREAM_* variables), descriptions and
    examples kept as written. A --x / --no-x switch says whether it is on or off by default; any other flag that
    takes no value is off unless given, whatever its stored default (--no-internal-tls stores False), so its help
    says "default: off" rather than that value."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if isinstance(action, argparse.BooleanOptionalAction):
            return f"{action.help} (default: {'on' if action.default else 'off'})"
        if action.option_strings and action.nargs == 0 and not isinstance(
                action, (argparse._HelpAction, argparse._VersionAction)):
            return f"{action.help} (default: off)"
        return super()._get_help_string(action)


def new_parser(prog: str, description: str | None, epilog: str | None = None) -> argparse.ArgumentParser:
    """An argument parser for one `flashstream` command, with the shared help layout."""
    return argparse.ArgumentParser(prog=prog, description=description, epilog=epilog, formatter_class=HelpFormatter)


def add_server_args(parser: argparse.ArgumentParser, stage: str, status_port: bool = True) -> None:
    """Adds ServerConfig's options: --port and --status-port (unless status_port is False: a stage whose status
    routes share another server) with FLASHSTREAM_<STAGE>_PORT and _STATUS_PORT defaults, --internal-token, and
    the option() fields."""
    grpc_port, default_status_port = DEFAULT_PORTS[stage]
    parser.add_argument("--port", type=int, default=env_default(f"{stage}_port", grpc_port),
                        help="gRPC port (0: any free port)")
    if status_port:
        parser.add_argument("--status-port", type=int,
                            default=env_default(f"{stage}_status_port", default_status_port),
                            help="HTTP port of /metrics, /health and /ready (0: none)")
    # The default is not read from the environment here, so that --help never prints the secret.
    parser.add_argument("--internal-token", default="",
                        help="secret every internal call carries and every internal stage requires (default: "
                             "FLASHSTREAM_INTERNAL_TOKEN, which `ps` does not show; none: any caller is let in)")
    add_options(parser, ServerConfig)


def server_config(args: argparse.Namespace) -> ServerConfig:
    return config_from_args(ServerConfig, args, port=args.port, status_port=getattr(args, "status_port", 0),
                            internal_token=args.internal_token or env_default("internal_token", ""))


def setup_logging(level: str, stage: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format=f"%(asctime)s %(levelname)s {stage} %(name)s: %(message)s",
    )


def check_host_port(address: str, what: str) -> None:
    """Raises InvalidArgument unless `address` is host:port (`what` names it in the message)."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise InvalidArgument(f"{what} must be host:port, got {address!r}")


def split_csv(values: Sequence[str] | str) -> list[str]:
    """'a,b' or ['a', 'b,c'] → ['a', 'b', 'c'] (for flags that take several addresses)."""
    items = [values] if isinstance(values, str) else list(values)
    return [part.strip() for item in items for part in item.split(",") if part.strip()]
