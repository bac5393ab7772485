"""Bytes of accepted tokens -> text that is safe to show: complete UTF-8 characters only, and
never the start of a stop string that may still complete (stop strings can straddle tokens).

Each released piece keeps the origin of the token that completed it (the drafter's name, or
"target") so the UI can colour accepted draft tokens by drafter.
"""

from __future__ import annotations

import codecs


class TextStream:
    def __init__(self, stop: list[str] | tuple[str, ...] = ()) -> None:
        self.stop = [s for s in stop if s]
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._held: list[tuple[str, str]] = []  # (text, origin) not yet released
        self.text = ""  # everything released so far
        self.stopped = False

    def push(self, data: bytes, origin: str) -> list[tuple[str, str]]:
        """Feed one token's bytes; return the pieces now safe to show."""
        if self.stopped:
            return []
        piece = self._decoder.decode(data)
        if piece:
            self._held.append((piece, origin))
        return self._release(final=False)

    def finish(self) -> list[tuple[str, str]]:
        """End of generation: release what is held (a partial character becomes U+FFFD)."""
        if not self.stopped:
            tail = self._decoder.decode(b"", final=True)
            if tail:
                self._held.append((tail, "target"))
        return self._release(final=True)

    def _release(self, final: bool) -> list[tuple[str, str]]:
        pending = "".join(text for text, _ in self._held)
        cut = len(pending)
        hits = [pending.find(s) for s in self.stop]
        hits = [h for h in hits if h >= 0]
        if hits:
            cut = min(hits)
            self.stopped = True
        elif not final:
            cut = len(pending) - self._partial_stop_suffix(pending)
        released = self._take(cut)
        if self.stopped:
            self._held = []
        return released

    def _partial_stop_suffix(self, text: str) -> int:
        longest = 0
        for stop in self.stop:
            for size in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:size]):
                    longest = size
                    break
        return longest

    def _take(self, count: int) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        while count > 0 and self._held:
            text, origin = self._held[0]
            if len(text) <= count:
                out.append((text, origin))
                self._held.pop(0)
                count -= len(text)
            else:
                out.append((text[:count], origin))
                self._held[0] = (text[count:], origin)
                count = 0
        self.text += "".join(text for text, _ in out)
        return out
