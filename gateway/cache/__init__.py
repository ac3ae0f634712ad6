"""The gateway's result cache: keys, stored answers, stores (in-process LRU or Redis) and request coalescing."""
