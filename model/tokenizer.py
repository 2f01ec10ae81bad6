"""Llama-2's tokenizer: a SentencePiece model (Meta's tokenizer.model) behind a small interface.

sentencepiece is imported when a Tokenizer is made, so `import fullgraph.model` needs torch alone.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

__all__ = ["Tokenizer"]


class Tokenizer:
    """Text <-> token ids with a SentencePiece model file.

    bos_id, eos_id and pad_id are -1 where the model defines no such piece (Meta's has no pad).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no tokenizer model file at {self.path}")
        sentencepiece = _import_sentencepiece()
        try:
            self._processor = sentencepiece.SentencePieceProcessor(model_file=str(self.path))
        except (RuntimeError, OSError) as exc:
            raise ValueError(f"{self.path} is not a valid SentencePiece model: {exc}") from exc

    @property
    def vocab_size(self) -> int:
        return self._processor.get_piece_size()

    @property
    def bos_id(self) -> int:
        return self._processor.bos_id()

    @property
    def eos_id(self) -> int:
        return self._processor.eos_id()

    @property
    def pad_id(self) -> int:
        return self._processor.pad_id()

    def encode(self, text: str, *, bos: bool = True, eos: bool = False) -> list[int]:
        """Token ids of `text`, with bos prepended and eos appended as asked."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        ids = self._processor.encode(text)
        if bos:
            ids = [self._special_id("bos", self.bos_id), *ids]
        if eos:
            ids = [*ids, self._special_id("eos", self.eos_id)]
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """The text of `ids`; bos, eos and pad decode to nothing."""
        bad = [i for i in ids if not isinstance(i, int) or not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"ids must be ints in [0, {self.vocab_size}); got {bad[:5]}")
        return self._processor.decode(list(ids))

    def __repr__(self) -> str:
        return f"Tokenizer({str(self.path)!r}, vocab_size={self.vocab_size})"

    def _special_id(self, name: str, value: int) -> int:
        if value < 0:
            raise ValueError(f"{self.path} defines no {name} piece; pass {name}=False")
        return value


def _import_sentencepiece():
    try:
        import sentencepiece
    except ImportError as exc:
        raise ImportError("Tokenizer needs sentencepiece: pip install 'fullgraph[model]'") from exc
    return sentencepiece
