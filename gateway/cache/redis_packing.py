"""hiredis command packing for redis-py's asyncio connections.

redis-py parses replies with hiredis whenever it is installed, but packs commands with hiredis only on its
sync connections; its asyncio ones pack every argument in Python (redis-py issue 4176). For the embedding
cache's batched write, a pipeline of one SET per input, that costs more than hiredis's packing does
(the store's reads pack with hiredis on connections of their own).
This mixin gives an asyncio connection class the packer that redis-py's sync connections use.
"""

from __future__ import annotations

from redis.asyncio import ConnectionPool
from redis.connection import HiredisRespSerializer
from redis.utils import HIREDIS_AVAILABLE


class HiredisPacking:
    """Put first in the bases of a redis.asyncio connection class."""

    _packer = HiredisRespSerializer()

    def pack_command(self, *args: object) -> list[bytes]:
        return self._packer.pack(*args)


def pack_with_hiredis(pool: ConnectionPool) -> bool:
    """Makes the pool's new connections pack commands with hiredis, keeping the class redis-py chose for the
    URL (TCP, TLS or Unix socket); False, and nothing changed, where hiredis is not installed."""
    if not HIREDIS_AVAILABLE:
        return False
    base = pool.connection_class
    if not issubclass(base, HiredisPacking):
        pool.connection_class = type(f"Hiredis{base.__name__}", (HiredisPacking, base), {})
    return True
