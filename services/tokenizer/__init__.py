"""The tokenizer stage: chat templates, encoding, incremental detokenization, stop strings, Tokenizer servicer."""
