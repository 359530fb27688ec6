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
