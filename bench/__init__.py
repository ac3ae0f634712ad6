"""FlashStream benchmarks; each writes its results under bench/results/."""
