"""Tensor parallelism of the decoder across the devices of one host: the process group, how a model's heads,
MLP columns and vocabulary are divided among ranks, and how one StepPlan drives every rank."""
