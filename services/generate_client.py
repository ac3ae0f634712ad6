"""`flashstream generate`: streams one completion from a running gateway to the terminal."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from flashstream.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc

from services.common.config import env_default, new_parser


@dataclass
class StreamStats:
    text: str
    num_tokens: int
    ttft_s: float
    total_s: float
    finish_reason: str

    @property
    def tokens_per_s(self) -> float:
        decode_s = self.total_s - self.ttft_s
        return (self.num_tokens - 1) / decode_s if self.num_tokens > 1 and decode_s > 0 else 0.0


def stream_to_terminal(address: str, prompt: str, max_tokens: int = 64, temperature: float = 0.0,
                       model: str = "", api_key: str = "", out=sys.stdout) -> StreamStats:
    """Calls Gateway.Generate, printing text as it arrives, then a line with TTFT and tokens/s."""
    request = gateway_pb2.GenerateRequest(
        model=model, prompt=prompt, add_special_tokens=True,
        options=gateway_pb2.GenerateOptions(
            sampling=common_pb2.SamplingParams(max_tokens=max_tokens, temperature=temperature)),
    )
    metadata = [("authorization", f"Bearer {api_key}")] if api_key else None
    start = time.perf_counter()
    first = None
    pieces: list[str] = []
    num_tokens = 0
    finish = ""
    out.write(prompt)
    out.flush()
    with grpc.insecure_channel(address) as channel:
        for message in gateway_pb2_grpc.GatewayStub(channel).Generate(request, metadata=metadata):
            if message.HasField("chunk"):
                if first is None:
                    first = time.perf_counter() - start
                num_tokens += len(message.chunk.token_ids)
                pieces.append(message.chunk.text)
                out.write(message.chunk.text)
                out.flush()
            elif message.HasField("done"):
                finish = common_pb2.FinishReason.Name(message.done.finish_reason).removeprefix("FINISH_REASON_")
    total = time.perf_counter() - start
    stats = StreamStats("".join(pieces), num_tokens, first or total, total, finish)
    out.write(f"\n\n[{stats.num_tokens} tokens, finish {stats.finish_reason}, TTFT {stats.ttft_s * 1e3:.1f} ms, "
              f"{stats.tokens_per_s:.1f} tokens/s]\n")
    out.flush()
    return stats


def build_parser():  # noqa: ANN201 - argparse.ArgumentParser
    parser = new_parser("flashstream generate", "Stream a completion from a running gateway, then print its "
                        "TTFT and tokens/s.", 'example:\n  flashstream generate "The scheduler keeps" --max-tokens 16')
    parser.add_argument("prompt", help="the prompt text")
    parser.add_argument("--gateway", default=env_default("gateway", "127.0.0.1:50050"), help="gateway gRPC address")
    parser.add_argument("--model", default="", help="model name ('': the gateway's only model)")
    parser.add_argument("--max-tokens", type=int, default=64, help="most tokens to generate")
    parser.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    parser.add_argument("--api-key", default=env_default("api_key", ""), help="API key, when the gateway checks them")
    return parser


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(list(argv))
    try:
        stream_to_terminal(args.gateway, args.prompt, args.max_tokens, args.temperature, args.model, args.api_key)
    except grpc.RpcError as exc:
        print(f"\nerror: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    return 0
