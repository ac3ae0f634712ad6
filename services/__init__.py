"""FlashStream services: the tokenizer, scheduler and worker stages and their shared pieces."""
