"""Token ids in, text deltas out: holds back half UTF-8 characters and partial stop strings. Pure.

Decoding is incremental: each token decodes only a short window (the ids since the previous commit
point, with the ids before them as context), so a generation of n tokens costs O(n), not O(n^2).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence


class TextStream:
    def __init__(self, decode: Callable[[Sequence[int]], str], stop: Sequence[str] = ()) -> None:
        self._decode = decode
        self._stop = [s for s in stop if s]
        self._longest = max((len(s) for s in self._stop), default=0)
        self.ids: list[int] = []
        self.text = ""  # full decoded text so far (possibly past a stop string)
        self.emitted = 0  # characters already handed out
        self.stopped = False
        self._stop_at = 0
        # Decode window: ids[_prefix:] is decoded each step; ids[_prefix:_read] decodes to _head,
        # whose characters are already part of ``text``.
        self._prefix = 0
        self._read = 0
        self._head = ""

    def push(self, token_id: int) -> str:
        """Add one token; return the text that is now safe to send (maybe empty)."""
        if self.stopped:
            return ""
        self.ids.append(token_id)
        window = self._decode(self.ids[self._prefix:])
        text = self.text + window[len(self._head):]
        if self._check_stop(text):  # before the UTF-8 hold: a stop may end right before a broken char
            return self._take(self._stop_at)
        if window.endswith("\ufffd"):  # an incomplete multi-byte character: wait for the next token
            return ""
        self.text = text
        self._prefix, self._read = self._read, len(self.ids)
        self._head = self._decode(self.ids[self._prefix:self._read])
        return self._take(len(text) - self._held_suffix(text))

    def flush(self) -> str:
        """At the end of generation: release what was held back (a stop-string prefix, a broken character)."""
        if self.stopped or not self.ids:
            return ""
        text = self.text + self._decode(self.ids[self._prefix:])[len(self._head):]
        if self._check_stop(text):
            return self._take(self._stop_at)
        self.text = text
        return self._take(len(text))

    def _check_stop(self, text: str) -> bool:
        if not self._stop:
            return False
        search_from = max(0, self.emitted - self._longest)
        hits = [i for i in (text.find(s, search_from) for s in self._stop) if i >= 0]
        if not hits:
            return False
        self.stopped = True
        self.text = text
        self._stop_at = min(hits)
        return True

    def _take(self, upto: int) -> str:
        if upto <= self.emitted:
            return ""
        delta = self.text[self.emitted:upto]
        self.emitted = upto
        return delta

    def _held_suffix(self, text: str) -> int:
        """Length of the longest suffix of ``text`` that starts some stop string."""
        if not self._stop:
            return 0
        for n in range(min(self._longest - 1, len(text)), 0, -1):
            tail = text[-n:]
            if any(s.startswith(tail) for s in self._stop):
                return n
        return 0

    @property
    def final_text(self) -> str:
        return self.text[: self.emitted]
