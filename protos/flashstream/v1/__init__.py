"""Generated protobuf and gRPC modules of the FlashStream v1 wire protocol (see the .proto files here)."""
