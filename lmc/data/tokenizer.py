"""Tokenizers of imported checkpoints, for tokenized text data (`config.data.tokenizer`).

A tokenizer is read with Hugging Face's `tokenizers` library from a `tokenizer.json`
(the file every hub checkpoint ships), or from a GPT-2-style `vocab.json` +
`merges.txt` pair when there is no tokenizer.json. `path` is the file itself or the
checkpoint directory holding it.
"""

from __future__ import annotations

import functools
from pathlib import Path

from lmc.errors import UserError

# End-of-document tokens of the common families: documents are joined with the first
# the vocabulary has (GPT-2 / GPT-NeoX, Llama 2, Gemma, Llama 3).
EOS_TOKENS = ("<|endoftext|>", "</s>", "<eos>", "<|end_of_text|>")


@functools.lru_cache(maxsize=8)
def load_tokenizer(path):
    """The `tokenizers.Tokenizer` at `path` (a tokenizer.json or a directory)."""
    from tokenizers import Tokenizer

    path = Path(path).expanduser()
    file = path / "tokenizer.json" if path.is_dir() else path
    if file.is_file():
        try:
            return Tokenizer.from_file(str(file))
        except Exception as e:  # the library raises a bare Exception on bad JSON
            raise UserError(f"cannot read tokenizer {file} ({e})") from None
    if path.is_dir() and (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
        from tokenizers.implementations import ByteLevelBPETokenizer

        return ByteLevelBPETokenizer(str(path / "vocab.json"), str(path / "merges.txt"))
    raise UserError(
        f"no tokenizer at {str(path)!r}: expected a tokenizer.json (or a directory with one, "
        "or with vocab.json + merges.txt); a sentencepiece-only tokenizer.model must be "
        "converted to tokenizer.json first"
    )


def eos_id(tokenizer) -> int | None:
    """The tokenizer's end-of-document token id, or None if it has none of EOS_TOKENS."""
    for token in EOS_TOKENS:
        i = tokenizer.token_to_id(token)
        if i is not None:
            return int(i)
    return None
