"""The GPU worker stage: loader, decoder, paged KV cache, runner, CUDA graphs and the Worker servicer."""
