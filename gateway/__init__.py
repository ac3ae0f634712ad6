"""The public API of FlashStream: gRPC `Gateway` and OpenAI-compatible HTTP in front of the tokenizer stage."""
