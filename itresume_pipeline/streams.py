"""A readable binary stream over a source of chunks, shared by the download and load paths."""

from __future__ import annotations

import io


class ChunkStream(io.RawIOBase):
    """`read`/`readinto` over whatever `_next_chunk` yields; `b""` from it means the end.

    The parser reads payloads as file objects, while the bytes come in chunks (an HTTP body, a
    prefetching thread); this adapter is the one place that slices chunks into reads.
    """

    def __init__(self) -> None:
        super().__init__()
        self._pending = b""
        self._done = False

    def _next_chunk(self) -> bytes:
        raise NotImplementedError

    def _fill(self) -> None:
        if not self._pending and not self._done:
            self._pending = self._next_chunk()
            self._done = not self._pending

    def peek(self, size: int) -> bytes:
        """Up to `size` bytes ahead, without consuming them (fewer only at the end): lets a
        caller look at the start of a body before the parser reads it from the beginning."""
        while len(self._pending) < size and not self._done:
            chunk = self._next_chunk()
            self._pending += chunk
            self._done = not chunk
        return self._pending[:size]

    def first_nonblank(self) -> bytes:
        """The first byte ahead that is not JSON whitespace, or b"" at the end; consumes none."""
        while not self._pending.lstrip() and not self._done:
            self.peek(len(self._pending) + 1)
        return self._pending.lstrip()[:1]

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            parts = [self._pending]
            self._pending = b""
            while not self._done:
                self._fill()
                parts.append(self._pending)
                self._pending = b""
            return b"".join(parts)
        self._fill()
        data, self._pending = self._pending[:size], self._pending[size:]
        return data

    def readinto(self, buffer) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)
