"""Streams one completion from a running FlashStream gateway (start one with `./dev.sh up`)."""

import sys

import grpc
from flashstream.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc


def main(address: str = "127.0.0.1:50050") -> None:
    with grpc.insecure_channel(address) as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        request = gateway_pb2.GenerateRequest(
            model="flashstream-demo",
            prompt="Once upon a time",
            options=gateway_pb2.GenerateOptions(sampling=common_pb2.SamplingParams(max_tokens=16)),
        )
        for message in stub.Generate(request):
            if message.HasField("chunk"):
                print(message.chunk.text, end="", flush=True)
            else:
                print("\nfinish:", common_pb2.FinishReason.Name(message.done.finish_reason),
                      "tokens:", message.done.usage.completion_tokens)


if __name__ == "__main__":
    main(*sys.argv[1:])
