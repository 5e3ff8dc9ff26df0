"""Incremental detokenization with stop strings, for streaming.

Each new token yields the text delta it completes. Text is held back while it ends
in an incomplete UTF-8 sequence (the tokenizer renders it as U+FFFD) or while its tail
could still grow into a stop string, so the concatenated deltas always equal the
final text, which is cut before the first stop string.
"""

from __future__ import annotations

_REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    def __init__(self, tokenizer, stop: list[str], skip_token_ids: set[int]) -> None:
        self.tok = tokenizer
        self.stop = list(stop)
        self.max_stop = max((len(s) for s in self.stop), default=0)
        self.skip = skip_token_ids
        self.ids: list[int] = []
        self.text = ""  # decoded text of ids so far (complete characters only)
        self.emitted = 0  # len of text already handed out
        self._full = ""
        self._stopped = False

    def add(self, token_id: int) -> tuple[str, bool]:
        """Append one token; returns (delta_text, hit_stop_string)."""
        if token_id not in self.skip:
            self.ids.append(token_id)
            # Whole re-decode: exact for every tokenizer family (SentencePiece strips a
            # leading space of the first token, byte-level BPE splits characters across
            # tokens), and cheap at completion lengths.
            full = self.tok.decode(self.ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
            # Hold back an incomplete multi-byte character at the end.
            self._full = full
            self.text = full.rstrip(_REPLACEMENT)
        if self.stop:
            cut = self._find_stop()
            if cut is not None:
                self.text = self.text[:cut]
                self._stopped = True
                delta = self.text[self.emitted :]
                self.emitted = len(self.text)
                return delta, True
            safe = len(self.text) - self._partial_stop_len()
        else:
            safe = len(self.text)
        delta = self.text[self.emitted : safe] if safe > self.emitted else ""
        self.emitted = max(self.emitted, safe)
        return delta, False

    def _find_stop(self) -> int | None:
        start = max(0, self.emitted - self.max_stop)
        best = None
        for s in self.stop:
            i = self.text.find(s, start)
            if i != -1 and (best is None or i < best):
                best = i
        return best

    def _partial_stop_len(self) -> int:
        """Length of the longest text suffix that is a proper prefix of a stop string."""
        best = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(self.text)), best, -1):
                if self.text.endswith(s[:n]):
                    best = n
                    break
        return best

    def flush(self) -> str:
        """Everything not yet emitted (called when the request finishes)."""
        if not self._stopped and self._full.startswith(self.text):
            self.text = self._full  # a genuinely invalid byte at the very end stays visible
        delta = self.text[self.emitted :]
        self.emitted = len(self.text)
        return delta
