"""A connection to Redis for the store's reads: each reply is received into the connection's one buffer and scanned
where it lies.

redis-py's asyncio connections read a reply through a StreamReader (each socket read appended to its buffer, then
cut off for the parser) and copy every value out into a bytes object; for a batch of stored vectors, a reply of a
MB, that machinery cost nearly as much again as the transfer. Here a BufferedProtocol receives straight into a
buffer that the connection keeps (its pages stay mapped from one read to the next), a scan of the RESP2 replies
notes where each value lies (a run of values of one length, as a batch's vectors are, is checked a byte of their
header at a time over all of them), and the caller copies the values out (`values`, or `rows`: one strided copy when
they share one length) before the connection's next command. Commands are packed by hiredis. The scan is written here
rather than taken from hiredis's Reader, which builds a bytes object per value and cost about three times the scan
on a reply of 128 vectors; it reads only the replies these reads get (simple strings, errors, arrays of bulk
strings) and refuses anything else.
"""

from __future__ import annotations

import asyncio

import hiredis
import numpy as np

from gateway.cache.rows import rows_of

_CRLF = b"\r\n"
_BYTES = [bytes([b]) for b in range(256)]
_MIN_FREE_BYTES = 64 * 1024  # what a receive may fill at least
_RUN_CHECKED_AT_ONCE = 8  # values in a row with one header, and values arrived, before a vectorised check pays


class ReplyError(ConnectionError):
    """Redis answered an error, or something that is not the reply of the command sent."""


class RedisConnection(asyncio.BufferedProtocol):
    """One command (or pipeline) at a time; `request` completes once all its replies have arrived. Replies are simple
    strings (checked for errors) or arrays of bulk strings (an MGET's: their values are noted)."""

    def __init__(self) -> None:
        self._buf = bytearray(_MIN_FREE_BYTES)
        self._filled = 0  # bytes of the current replies received
        self._pos = 0  # where the scan goes on
        self._replies_left = 0
        self._items_left = -1  # of the array being scanned; -1: between replies
        self._bulk_header = b""  # the last value's `$<length>\r\n`, which its neighbours most likely share
        self._run = 0  # values in a row (the last included) that had that header
        self.starts: list[int] = []  # where each value of the arrays received begins; -1: nil
        self.lengths: list[int] = []
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[None] | None = None

    @classmethod
    async def open(cls, host: str = "", port: int = 6379, path: str = "", username: str | None = None,
                   password: str | None = None, db: int = 0) -> RedisConnection:
        """Connects over TCP (or to the Unix socket `path`), then authenticates and selects db where asked to."""
        loop = asyncio.get_running_loop()
        if path:
            _, conn = await loop.create_unix_connection(cls, path)
        else:
            _, conn = await loop.create_connection(cls, host, port)
        try:
            setup = []
            if password is not None:
                setup.append(("AUTH", username, password) if username else ("AUTH", password))
            if db:
                setup.append(("SELECT", db))
            if setup:
                await conn.request(setup)
        except BaseException:
            conn.close()
            raise
        return conn

    @property
    def is_idle(self) -> bool:
        """Open and with no reply owed: only such a connection may serve the next command."""
        return self._transport is not None and not self._transport.is_closing() and self._replies_left == 0

    def request(self, commands: list[tuple]) -> asyncio.Future[None]:
        """Sends the commands at once; the future is done once all their replies have arrived, or raises ReplyError
        for an error reply and ConnectionError when the connection closes first. A connection whose request did not
        complete is left with bytes unread: close it."""
        if not self.is_idle:
            raise ConnectionError("redis connection is closed or has a command in flight")
        self._filled = self._pos = 0
        self._items_left = -1
        self._bulk_header = b""
        self._run = 0
        self.starts.clear()
        self.lengths.clear()
        self._replies_left = len(commands)
        self._waiter = asyncio.get_running_loop().create_future()
        self._transport.write(b"".join(hiredis.pack_command(command) for command in commands))
        return self._waiter

    def values(self) -> list[bytes | None]:
        """The values of the arrays received, as bytes (valid until the next command)."""
        view = memoryview(self._buf)
        return [None if start < 0 else bytes(view[start:start + n]) for start, n in zip(self.starts, self.lengths)]

    def rows(self, dtype: np.dtype) -> list[np.ndarray | None]:
        """The values of the arrays received as 1-D arrays of dtype, copied out of the buffer: rows of one array
        where every value is present with one length at one stride (as an MGET of one batch's vectors is), in one
        strided copy. Otherwise as `rows_of` decodes them."""
        starts, lengths = self.starts, self.lengths
        n = lengths[0] if lengths else 0
        if n > 0 and n % dtype.itemsize == 0 and min(starts) >= 0 and lengths.count(n) == len(lengths):
            stride = len(b"$%d\r\n\r\n" % n) + n  # every value of one array sits this far from the last
            if starts[-1] - starts[0] == stride * (len(starts) - 1):  # one array, not the values of several
                # [values, n / itemsize] over the buffer, each row one value; its copy is contiguous
                found = np.ndarray((len(starts), n // dtype.itemsize), dtype, self._buf, starts[0],
                                   (stride, dtype.itemsize)).copy()
                return list(found)
        return rows_of(self.values(), dtype)

    def close(self) -> None:
        """Drops the connection at once; a request in flight is cancelled (nobody is left to hear its error)."""
        if self._waiter is not None:
            self._waiter.cancel()
        if self._transport is not None:
            self._transport.abort()

    # asyncio.BufferedProtocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self._transport = None
        self._fail(ConnectionError(f"redis closed the connection: {exc or 'end of stream'}"))

    def get_buffer(self, sizehint: int) -> memoryview:
        if len(self._buf) - self._filled < _MIN_FREE_BYTES:  # grows at most a few times: the buffer is kept
            grown = bytearray(2 * len(self._buf))
            grown[:self._filled] = memoryview(self._buf)[:self._filled]
            self._buf = grown
        return memoryview(self._buf)[self._filled:]

    def buffer_updated(self, nbytes: int) -> None:
        self._filled += nbytes
        if self._waiter is None or self._waiter.done():
            self._fail(ReplyError("redis sent bytes that no command asked for"))
            self.close()
            return
        try:
            finished = self._scan()
        except (ReplyError, ValueError, IndexError) as exc:
            self._fail(exc if isinstance(exc, ReplyError) else ReplyError(f"unreadable redis reply: {exc}"))
            self.close()
            return
        if finished:
            self._waiter.set_result(None)

    def eof_received(self) -> bool:
        return False  # close the transport; connection_lost fails the waiter

    def _fail(self, exc: Exception) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)

    def _scan(self) -> bool:
        """Advances over what has arrived; True once every reply owed is complete."""
        buf, end, pos = self._buf, self._filled, self._pos
        header, run, starts, lengths = self._bulk_header, self._run, self.starts, self.lengths
        while self._replies_left:
            if self._items_left < 0:  # a reply begins
                eol = buf.find(_CRLF, pos, end)
                if eol < 0:
                    break
                kind = buf[pos]
                if kind == 0x2A:  # '*'
                    self._items_left = int(buf[pos + 1:eol])
                elif kind == 0x2D:  # '-'
                    raise ReplyError(f"redis error: {buf[pos + 1:eol].decode(errors='replace')}")
                elif kind != 0x2B:  # '+'
                    raise ReplyError(f"unexpected redis reply {bytes(buf[pos:eol])[:40]!r}")
                pos = eol + 2
            while self._items_left > 0:
                if header:  # values of the last one's length: their header is known, their ends are where it says
                    n = lengths[-1]
                    stride = len(header) + n + 2
                    arrived = min(self._items_left, (end - pos) // stride)
                    if min(run, arrived) >= _RUN_CHECKED_AT_ONCE:  # a batch's vectors: checked together
                        alike = _framed_alike(buf, pos, arrived, header, stride)
                    else:
                        alike = int(arrived > 0 and buf.startswith(header, pos))
                    if alike == 1:
                        starts.append(pos + len(header))
                        lengths.append(n)
                    elif alike:
                        starts.extend(range(pos + len(header), pos + len(header) + alike * stride, stride))
                        lengths.extend([n] * alike)
                    if alike:
                        pos += alike * stride
                        run += alike
                        self._items_left -= alike
                        continue
                eol = buf.find(_CRLF, pos, end)
                if eol < 0:
                    break
                if buf[pos] != 0x24:  # '$'
                    raise ReplyError(f"expected a bulk string, got {bytes(buf[pos:eol])[:40]!r}")
                n = int(buf[pos + 1:eol])
                if n < 0:
                    starts.append(-1)
                    lengths.append(0)
                    header, run = b"", 0
                    pos = eol + 2
                elif eol + 4 + n > end:
                    break
                else:
                    header, run = bytes(buf[pos:eol + 2]), 1
                    starts.append(eol + 2)
                    lengths.append(n)
                    pos = eol + 4 + n
                self._items_left -= 1
            if self._items_left > 0:
                break
            self._items_left = -1
            self._replies_left -= 1
        self._pos, self._bulk_header, self._run = pos, header, run
        return self._replies_left == 0


def _framed_alike(buf: bytearray, pos: int, count: int, header: bytes, stride: int) -> int:
    """How many of the `count` values from pos on (all arrived, `stride` bytes apart) begin with `header`, before the
    first that does not: the scan's per-value check, done a byte of the header at a time over every value at once."""
    end = pos + count * stride
    alike = count
    for offset, byte in enumerate(header):
        column = buf[pos + offset:end:stride]  # [count] that byte of each value's header
        if column.count(byte) != count:  # some value differs here: the values before the first that does are alike
            alike = min(alike, count - len(column.lstrip(_BYTES[byte])))
    return alike
