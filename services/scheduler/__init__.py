"""The scheduler stage: sequences, paged block manager with prefix cache, batching policy, worker pool, servicer.

The core (sequence, block_manager, scheduler, engine, router) is pure Python: it never imports torch or grpc.
"""
