"""The worker's batched sampler, split by concept; import it from `services.worker.sampler`."""
