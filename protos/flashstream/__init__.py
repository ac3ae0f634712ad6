"""FlashStream wire protocol (generated protobuf and gRPC modules live in flashstream.v1)."""
