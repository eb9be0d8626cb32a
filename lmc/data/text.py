"""Byte-level text corpora from local files: `text:code`, `text:prose`, `text:mixed`, `text:dir`.

Tokens are the file's raw bytes (vocabulary 256, no tokenizer to download); files are
joined with a 0 byte, which plain text never contains, as an end-of-document marker.
With `tokenizer` (a tokenizer.json, or a checkpoint directory holding one; see
`lmc.data.tokenizer`) each file's text is tokenized instead, files joined with the
tokenizer's end-of-document token, and `max_bytes` still caps the bytes read.
A training example is a window of `context` tokens and its next tokens:

    x = stream[p : p + context],  y = stream[p + 1 : p + context + 1]

Sources (all offline):
- `code`:  the Python standard library's own `.py` files (`sysconfig` "stdlib",
           without site-packages), or the `.py` files under `directory`.
- `prose`: the English reStructuredText sources of the Python documentation
           (Debian/Ubuntu package `python3.11-doc`: /usr/share/doc/python3.11/html/_sources),
           or the `.txt`/`.rst`/`.md` files under `directory`.
- `dir`:   every text file (no NUL byte in its first 8 KiB) under `directory`
           (config.data.dir).
- `mixed`: code and prose; each training window is code with probability `mix`.
- `tfds:<name>`: the `text` feature of a prepared TFDS text dataset under
           `directory` (or $TFDS_DATA_DIR), its own train/test split.

Held-out split by file: a file is a test file iff the SHA-1 of its path relative to
the corpus root falls in the first `test_fraction` of the hash range, so the split is
the same on every machine and does not change when other files are added. `max_bytes`
caps each split of each domain; files are taken in hash order (a fixed pseudo-random
subset, not the alphabetically first packages).

Batches: the training batch at `step` is a pure function of (data_seed, step) (NumPy
Philox keyed by both), like the step-indexed image order; there are no epochs, windows
start anywhere. `num_train` is the number of disjoint windows in the training stream
(one "epoch"). `train_x/train_y` and `test_x/test_y` are fixed evaluation windows,
evenly spaced over the training (held-in) and test (held-out) streams.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import sysconfig
from pathlib import Path
from typing import ClassVar

import numpy as np

from lmc.errors import UserError

SOURCES = ("code", "prose", "mixed", "dir", "tfds:<name>")
VOCAB = 256
SEPARATOR = 0
PROSE_DIR = "/usr/share/doc/python3.11/html/_sources"
PROSE_SUFFIXES = (".txt", ".rst", ".md")
SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__", ".git"}
DEFAULTS = dict(context=64, eval_windows=128, test_fraction=0.1, max_bytes=4_000_000, mix=0.5)


@dataclasses.dataclass(frozen=True, eq=False)
class Domain:
    """One corpus: its train and test token streams and the files that made them."""

    name: str
    root: str
    train: np.ndarray  # tokens: uint8 bytes, or int32 ids of a tokenizer
    test: np.ndarray
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    bytes_per_token: float = 1.0  # text bytes per token (both splits)


@dataclasses.dataclass(frozen=True, eq=False)
class TextDataset:
    """Duck-types `lmc.data.Dataset` for the trainer and the evaluators (labels (N, T))."""

    name: str
    domains: tuple[Domain, ...]
    weights: tuple[float, ...]  # sampling probability of each domain in train batches
    context: int
    eval_windows: int
    num_classes: int = VOCAB
    augmentable: bool = False
    tokenizer: str = ""  # "": bytes
    kind: ClassVar[str] = "text"

    # ---- the Dataset interface ---------------------------------------------------
    def train_batch(
        self, data_seed: int, step: int, batch_size: int, process: int = 0, num_processes: int = 1
    ) -> tuple[np.ndarray, np.ndarray]:
        """This process's rows of the global batch at `step`: x, y int32 (rows, context)."""
        if batch_size <= 0:
            raise UserError(f"config.batch_size must be positive, got {batch_size}")
        if batch_size % num_processes:
            raise UserError(
                f"config.batch_size={batch_size} is not divisible by the {num_processes} processes"
            )
        rng = np.random.Generator(np.random.Philox(key=[int(data_seed), int(step)]))
        # Draw for the whole global batch, then slice: the batch does not depend on
        # the number of processes.
        which = np.searchsorted(np.cumsum(self.weights), rng.random(batch_size), side="right")
        which = np.minimum(which, len(self.domains) - 1)
        u = rng.random(batch_size)
        share = batch_size // num_processes
        rows = slice(process * share, (process + 1) * share)
        windows = np.empty((share, self.context + 1), np.int32)
        for d, domain in enumerate(self.domains):
            mine = np.flatnonzero(which[rows] == d)
            if len(mine):
                starts = (u[rows][mine] * (len(domain.train) - self.context)).astype(np.int64)
                windows[mine] = _gather(domain.train, starts, self.context + 1)
        return windows[:, :-1], windows[:, 1:]

    @functools.cached_property
    def _train_eval(self) -> tuple[np.ndarray, np.ndarray]:
        return self._eval_split("train")

    @functools.cached_property
    def _test_eval(self) -> tuple[np.ndarray, np.ndarray]:
        return self._eval_split("test")

    @property
    def train_x(self) -> np.ndarray:
        return self._train_eval[0]

    @property
    def train_y(self) -> np.ndarray:
        return self._train_eval[1]

    @property
    def test_x(self) -> np.ndarray:
        return self._test_eval[0]

    @property
    def test_y(self) -> np.ndarray:
        return self._test_eval[1]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.context,)

    @property
    def num_train(self) -> int:
        """Disjoint training windows: one pass over the training tokens."""
        return int(sum(len(d.train) for d in self.domains) // self.context)

    @property
    def num_test(self) -> int:
        return int(self.test_x.shape[0])

    @property
    def num_train_tokens(self) -> int:
        return int(sum(len(d.train) for d in self.domains))

    # ---- text-specific -------------------------------------------------------------
    @property
    def bytes_per_token(self) -> float:
        """Text bytes per token (1 for bytes), weighted over the domains' streams."""
        tokens = [len(d.train) + len(d.test) for d in self.domains]
        weighted = sum(d.bytes_per_token * n for d, n in zip(self.domains, tokens, strict=True))
        return weighted / sum(tokens)

    @property
    def domain_names(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.domains)

    def only(self, domain: str) -> TextDataset:
        """The same data restricted to one domain (e.g. code-only children of a mixed parent)."""
        for d in self.domains:
            if d.name == domain:
                return dataclasses.replace(
                    self, name=f"text:{domain}", domains=(d,), weights=(1.0,)
                )
        raise UserError(f"dataset {self.name} has no domain {domain!r}; it has {self.domain_names}")

    def eval_splits(self, split: str = "test") -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per-domain fixed evaluation windows: {domain: (x, y)}."""
        return {d.name: self.only(d.name)._eval_split(split) for d in self.domains}

    def summary(self) -> dict:
        """Sizes and roots for results.json (file lists are long; counts only)."""
        return {
            d.name: {
                "root": d.root,
                "train_files": len(d.train_files),
                "test_files": len(d.test_files),
                "train_tokens": int(len(d.train)),
                "test_tokens": int(len(d.test)),
                **(
                    {"tokenizer": self.tokenizer, "bytes_per_token": round(d.bytes_per_token, 4)}
                    if self.tokenizer
                    else {}
                ),
            }
            for d in self.domains
        }

    def _eval_split(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for d in self.domains:
            stream = d.train if split == "train" else d.test
            starts = np.linspace(0, len(stream) - self.context - 1, self.eval_windows)
            w = _gather(stream, starts.astype(np.int64), self.context + 1)
            xs.append(w[:, :-1])
            ys.append(w[:, 1:])
        x, y = np.concatenate(xs), np.concatenate(ys)
        x.setflags(write=False), y.setflags(write=False)
        return x, y


def _gather(stream: np.ndarray, starts: np.ndarray, length: int) -> np.ndarray:
    return stream[starts[:, None] + np.arange(length)[None, :]].astype(np.int32)


# ---- corpora ------------------------------------------------------------------------
def code_root() -> str:
    return sysconfig.get_paths()["stdlib"]


def _list_files(root: Path, suffixes: tuple[str, ...] | None) -> list[str]:
    """Relative paths (posix, sorted) of the regular files under `root`."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("."))
        for f in filenames:
            if f.startswith(".") or (suffixes and not f.endswith(suffixes)):
                continue
            path = Path(dirpath) / f
            if path.is_file() and not path.is_symlink():
                out.append(path.relative_to(root).as_posix())
    return sorted(out)


def _hash01(rel: str) -> float:
    """A uniform number in [0, 1) from the relative path (machine-independent)."""
    return int.from_bytes(hashlib.sha1(rel.encode()).digest()[:8], "big") / 2.0**64


def split_files(files: list[str], test_fraction: float) -> tuple[list[str], list[str]]:
    """(train, test) relative paths, each in hash order. Deterministic per path."""
    ordered = sorted(files, key=lambda f: (_hash01(f), f))
    test = [f for f in ordered if _hash01(f) < test_fraction]
    if not test and len(ordered) > 1:
        test = ordered[:1]  # tiny corpora: still hold out one file
    held = set(test)
    return [f for f in ordered if f not in held], test


def _read(
    root: Path, files: list[str], max_bytes: int, text_only: bool, tokenizer: str = ""
) -> tuple[np.ndarray, tuple, float]:
    """Concatenate files (hash order) up to `max_bytes`, 0-separated (or tokenized and
    joined by the end-of-document token); skips binary files. Returns the token
    stream, the files used and the text bytes per token."""
    chunks, used, total = [], [], 0
    for rel in files:
        if total >= max_bytes:
            break
        try:
            data = (root / rel).read_bytes()
        except OSError:
            continue
        if not data or (text_only and b"\0" in data[:8192]):
            continue
        data = data.replace(b"\0", b"")[: max_bytes - total]
        chunks.append(data)
        used.append(rel)
        total += len(data) + 1
    stream, ratio = _stream(chunks, tokenizer)
    return stream, tuple(used), ratio


def _stream(chunks: list[bytes], tokenizer: str) -> tuple[np.ndarray, float]:
    """The documents `chunks` as one token stream, and its text bytes per token."""
    if tokenizer:
        stream = _tokenize(chunks, tokenizer)
        return stream, sum(len(c) for c in chunks) / max(len(stream), 1)
    joined = b"".join(c + bytes([SEPARATOR]) for c in chunks)
    return np.frombuffer(joined, np.uint8), 1.0


def _tokenize(chunks: list[bytes], path: str) -> np.ndarray:
    """Token ids of each chunk's text, joined by the end-of-document token (if any)."""
    from lmc.data.tokenizer import eos_id, load_tokenizer

    tok = load_tokenizer(path)
    eos = eos_id(tok)
    texts = [c.decode("utf-8", errors="replace") for c in chunks]
    ids = []
    for enc in tok.encode_batch(texts, add_special_tokens=False):
        ids.extend(enc.ids)
        if eos is not None:
            ids.append(eos)
    return np.asarray(ids, np.int32)


@functools.lru_cache(maxsize=16)
def load_domain(
    name: str,
    root: str,
    what: str,
    suffixes: tuple[str, ...] | None,
    test_fraction: float,
    max_bytes: int,
    context: int,
    tokenizer: str = "",
) -> Domain:
    """Read one corpus (cached: experiments load the same corpus several times)."""
    path = Path(root).expanduser()
    if not path.is_dir():
        raise UserError(f"{what}: directory {str(path)!r} does not exist")
    files = _list_files(path, suffixes)
    if not files:
        kinds = f" ({', '.join(suffixes)})" if suffixes else ""
        raise UserError(f"{what}: directory {str(path)!r} has no text files{kinds}")
    train_files, test_files = split_files(files, test_fraction)
    if not train_files or not test_files:
        raise UserError(
            f"{what}: directory {str(path)!r} has {len(files)} file(s) and "
            f"config.data.test_fraction={test_fraction} leaves the training or test split "
            "empty; need at least 2 files (the held-out split is by file)"
        )
    text_only = suffixes is None
    train, train_used, train_ratio = _read(path, train_files, max_bytes, text_only, tokenizer)
    test, test_used, test_ratio = _read(path, test_files, max_bytes, text_only, tokenizer)
    unit = "tokens" if tokenizer else "bytes"
    for split, stream in (("training", train), ("test", test)):
        if len(stream) < context + 2:
            raise UserError(
                f"{what}: the {split} files under {str(path)!r} hold {len(stream)} {unit}, fewer "
                f"than one window of config.data.context={context} (+2); add text or lower the "
                "context"
            )
    ratio = (train_ratio * len(train) + test_ratio * len(test)) / (len(train) + len(test))
    return Domain(name, str(path), train, test, train_used, test_used, ratio)


def load_text(source: str, directory: str | None = None, **options) -> TextDataset:
    """`text:<source>`; options: context, eval_windows, test_fraction, max_bytes, mix,
    code_dir, prose_dir (None or '' means the default)."""
    extra = ("code_dir", "prose_dir", "tokenizer")
    unknown = set(options) - set(DEFAULTS) - set(extra)
    if unknown:
        raise UserError(
            f"unknown text data option(s) {sorted(unknown)}; valid: {sorted([*DEFAULTS, *extra])}"
        )
    opts = {k: v if options.get(k) in (None, "") else options[k] for k, v in DEFAULTS.items()}
    context, windows = int(opts["context"]), int(opts["eval_windows"])
    test_fraction, max_bytes, mix = (
        float(opts["test_fraction"]),
        int(opts["max_bytes"]),
        float(opts["mix"]),
    )
    if context <= 0:
        raise UserError(f"config.data.context must be positive, got {context}")
    if windows <= 0:
        raise UserError(f"config.data.eval_windows must be positive, got {windows}")
    if not 0.0 < test_fraction < 1.0:
        raise UserError(f"config.data.test_fraction must be in (0, 1), got {test_fraction}")
    if max_bytes <= 0:
        raise UserError(f"config.data.max_bytes must be positive, got {max_bytes}")
    if not 0.0 <= mix <= 1.0:
        raise UserError(f"config.data.mix must be in [0, 1], got {mix}")
    tokenizer, vocab = _tokenizer(options.get("tokenizer"))
    common = (test_fraction, max_bytes, context, tokenizer)

    def pick(kind: str, default: str) -> tuple[str, str]:
        """(root, how the error messages name it) of the code or prose corpus."""
        if options.get(f"{kind}_dir"):
            return str(options[f"{kind}_dir"]), f"text:{kind} (config.data.{kind}_dir)"
        if source == kind and directory:
            return str(directory), f"text:{kind} (config.data.dir)"
        return default, f"text:{kind}"

    def code():
        return load_domain("code", *pick("code", code_root()), (".py",), *common)

    def prose():
        root, what = pick("prose", PROSE_DIR)
        if root == PROSE_DIR and not Path(PROSE_DIR).is_dir():
            raise UserError(
                f"text:prose: {PROSE_DIR} is missing; install the Python documentation sources "
                "(`apt-get install python3.11-doc`) or point config.data.dir at a directory of "
                "English text (or use text:dir)"
            )
        return load_domain("prose", root, what, PROSE_SUFFIXES, *common)

    if source == "mixed" and directory:
        raise UserError(
            "text:mixed reads config.data.code_dir and config.data.prose_dir (empty: the "
            f"default corpora), not config.data.dir={directory!r}"
        )
    if source == "code":
        domains, weights = (code(),), (1.0,)
    elif source == "prose":
        domains, weights = (prose(),), (1.0,)
    elif source == "mixed":
        domains, weights = (code(), prose()), (mix, 1.0 - mix)
    elif source.startswith("tfds:"):
        domains, weights = (load_tfds_domain(source[5:], directory, *common[1:]),), (1.0,)
    elif source == "dir":
        if not directory:
            raise UserError("text:dir reads the directory config.data.dir, which is not set")
        domain = load_domain("dir", str(directory), "text:dir (config.data.dir)", None, *common)
        domains, weights = (domain,), (1.0,)
    else:
        raise UserError(
            f"unknown text source 'text:{source}'; valid: "
            + ", ".join(f"text:{s}" for s in SOURCES)
        )
    return TextDataset(f"text:{source}", domains, weights, context, windows, vocab,
                       tokenizer=tokenizer)  # fmt: skip


@functools.lru_cache(maxsize=4)
def load_tfds_domain(
    name: str, data_dir: str | None, max_bytes: int, context: int, tokenizer: str = ""
) -> Domain:
    """`text:tfds:<name>`: the `text` feature of a prepared TFDS text dataset (e.g.
    lm1b, wikitext), each example one document; held out: its `test` split (else
    `validation`). Read with `tfds.data_source` (no TensorFlow), in the stored order,
    up to `max_bytes` per split."""
    import tensorflow_datasets as tfds

    from lmc.data.tfds_source import PREPARE_HINT

    data_dir = data_dir or os.environ.get("TFDS_DATA_DIR")
    what = f"text:tfds:{name}"
    try:
        splits = tfds.builder(name, data_dir=data_dir).info.splits
        test_split = "test" if "test" in splits else "validation"
        sources = tfds.data_source(name, split=["train", test_split], data_dir=data_dir,
                                   download=False)  # fmt: skip
    except Exception as e:  # TFDS raises a zoo of types for "not prepared"/"unknown"
        raise UserError(
            f"{what}: not available under {data_dir or '~/tensorflow_datasets'} "
            f"({type(e).__name__}: {str(e).splitlines()[0]}); to " + PREPARE_HINT.format(name=name)
        ) from None
    streams = []
    for split, source in zip(("train", test_split), sources, strict=True):
        chunks, total = [], 0
        for i in range(len(source)):
            if total >= max_bytes:
                break
            text = source[i].get("text")
            if text is None:
                raise UserError(f"{what}: examples have no 'text' feature ({sorted(source[i])})")
            data = (text if isinstance(text, bytes) else str(text).encode())[: max_bytes - total]
            chunks.append(data.replace(b"\0", b""))
            total += len(data) + 1
        stream, ratio = _stream(chunks, tokenizer)
        if len(stream) < context + 2:
            raise UserError(
                f"{what}: its {split} split holds {len(stream)} tokens, fewer than one window "
                f"of config.data.context={context} (+2)"
            )
        streams.append((stream, ratio, f"{split} ({len(chunks)} examples)"))
    (train, r_train, f_train), (test, r_test, f_test) = streams
    ratio = (r_train * len(train) + r_test * len(test)) / (len(train) + len(test))
    return Domain(f"tfds:{name}", data_dir or "", train, test, (f_train,), (f_test,), ratio)


def _tokenizer(path) -> tuple[str, int]:
    """(the tokenizer's resolved path, its vocabulary size); ("", 256) for bytes."""
    if not path:
        return "", VOCAB
    from lmc.data.tokenizer import load_tokenizer

    resolved = str(Path(str(path)).expanduser().resolve())
    return resolved, int(load_tokenizer(resolved).get_vocab_size(with_added_tokens=True))
