"""A binary stream over chunks (an HTTP body, a prefetching thread) for parsers of file objects."""

from __future__ import annotations

import io
from collections.abc import Callable


class ChunkStream(io.RawIOBase):
    """`read` over what `_next_chunk` returns, which is `b""` at the end and after it."""

    _next_chunk: Callable[[], bytes]

    def __init__(self) -> None:
        super().__init__()
        self._pending = b""

    def peek(self, size: int) -> bytes:
        """Up to `size` bytes ahead without consuming them (fewer only at the end)."""
        while len(self._pending) < size and (chunk := self._next_chunk()):
            self._pending += chunk
        return self._pending[:size]

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            return self.readall()  # io's, through this read
        if not self._pending:
            self._pending = self._next_chunk()
        data, self._pending = self._pending[:size], self._pending[size:]
        return data
