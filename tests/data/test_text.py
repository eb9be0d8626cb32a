"""Byte-level text sources: determinism, held-out split by file, errors."""

from pathlib import Path

import numpy as np
import pytest

from lmc import data as data_lib
from lmc.data import text
from lmc.errors import UserError


def make_corpus(root: Path, n: int = 12, size: int = 400, suffix: str = ".txt") -> dict[str, int]:
    """File i holds only the byte ord('A') + i, so every window reveals its source file."""
    root.mkdir(parents=True, exist_ok=True)
    letters = {}
    for i in range(n):
        rel = f"sub{i % 3}/file{i:02d}{suffix}"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(bytes([65 + i]) * size)
        letters[rel] = 65 + i
    return letters


def test_train_batch_is_a_pure_function_of_seed_and_step(tmp_path):
    make_corpus(tmp_path)
    ds = data_lib.load("text:dir", str(tmp_path), context=16, eval_windows=4)
    x1, y1 = ds.train_batch(3, 7, 8)
    x2, y2 = ds.train_batch(3, 7, 8)
    assert x1.shape == y1.shape == (8, 16) and x1.dtype == np.int32
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    # A freshly loaded copy (cache cleared) gives the same batch: nothing depends on state.
    text.load_domain.cache_clear()
    x3, _ = data_lib.load("text:dir", str(tmp_path), context=16, eval_windows=4).train_batch(
        3, 7, 8
    )
    np.testing.assert_array_equal(x1, x3)
    assert not np.array_equal(x1, ds.train_batch(3, 8, 8)[0])
    assert not np.array_equal(x1, ds.train_batch(4, 7, 8)[0])
    # Processes get contiguous shares of the same global batch.
    halves = [ds.train_batch(3, 7, 8, process=p, num_processes=2)[0] for p in (0, 1)]
    np.testing.assert_array_equal(np.concatenate(halves), x1)


def test_labels_are_next_tokens():
    ds = data_lib.load("text:code", context=32, eval_windows=4, max_bytes=50_000)
    x, y = ds.train_batch(0, 0, 4)
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])
    np.testing.assert_array_equal(ds.test_x[:, 1:], ds.test_y[:, :-1])
    assert ds.num_classes == 256 and not ds.augmentable and ds.input_shape == (32,)
    assert ds.num_train == ds.num_train_tokens // 32


def test_held_out_split_is_by_file_and_stable(tmp_path):
    letters = make_corpus(tmp_path / "a", n=40)
    ds = data_lib.load(
        "text:dir", str(tmp_path / "a"), context=8, eval_windows=32, test_fraction=0.25
    )
    (domain,) = ds.domains
    train_files, test_files = set(domain.train_files), set(domain.test_files)
    assert train_files and test_files and not train_files & test_files
    assert train_files | test_files == set(letters)
    test_letters = {letters[f] for f in test_files} | {text.SEPARATOR}
    train_letters = {letters[f] for f in train_files} | {text.SEPARATOR}
    assert set(np.unique(ds.test_x)) <= test_letters
    assert set(np.unique(ds.train_x)) <= train_letters
    for step in range(5):
        assert set(np.unique(ds.train_batch(0, step, 8)[0])) <= train_letters
    # The split depends only on each file's relative path: adding files moves none.
    make_corpus(tmp_path / "b", n=60)
    bigger = data_lib.load(
        "text:dir", str(tmp_path / "b"), context=8, eval_windows=4, test_fraction=0.25
    ).domains[0]
    assert set(bigger.test_files) & set(letters) == test_files


def test_mixed_samples_domains_by_weight_and_splits_per_domain(tmp_path):
    make_corpus(tmp_path / "code", suffix=".py")
    make_corpus(tmp_path / "prose", suffix=".rst")
    ds = text.load_text(
        "mixed",
        code_dir=str(tmp_path / "code"),
        prose_dir=str(tmp_path / "prose"),
        context=8,
        eval_windows=4,
        mix=0.25,
    )
    assert ds.domain_names == ("code", "prose")
    splits = ds.eval_splits("test")
    assert set(splits) == {"code", "prose"} and splits["code"][0].shape == (4, 8)
    assert ds.test_x.shape == (8, 8)  # both domains' windows
    code_only = ds.only("code")
    assert code_only.domain_names == ("code",) and code_only.weights == (1.0,)
    with pytest.raises(UserError, match="no domain"):
        ds.only("poetry")


def test_mixed_weight_is_respected(tmp_path):
    # Code files hold 'a'..., prose files hold 'A'...: lower case marks code windows.
    (tmp_path / "code").mkdir()
    (tmp_path / "prose").mkdir()
    for i in range(6):
        (tmp_path / "code" / f"m{i}.py").write_bytes(b"a" * 500)
        (tmp_path / "prose" / f"d{i}.rst").write_bytes(b"A" * 500)
    ds = text.load_text(
        "mixed",
        code_dir=str(tmp_path / "code"),
        prose_dir=str(tmp_path / "prose"),
        context=8,
        mix=0.25,
    )
    x = np.concatenate([ds.train_batch(1, s, 64)[0] for s in range(50)])
    code_fraction = np.mean((x == ord("a")).any(axis=1))
    assert abs(code_fraction - 0.25) < 0.03


def test_real_corpora_load():
    code = data_lib.load("text:code", context=64, eval_windows=8, max_bytes=100_000)
    assert code.domains[0].train_files[0].endswith(".py")
    assert code.test_x.shape == (8, 64)
    if not Path(text.PROSE_DIR).is_dir():
        pytest.skip("python3.11-doc not installed")
    prose = data_lib.load("text:prose", context=64, eval_windows=8, max_bytes=100_000)
    assert prose.domains[0].train_files[0].endswith(".txt")


@pytest.mark.parametrize(
    "setup, match",
    [
        ("missing", "does not exist"),
        ("empty", "has no text files"),
        ("binary", "has no text files|fewer than one window|hold 0 bytes"),
        ("one_file", "need at least 2"),
        ("tiny", "fewer than one window"),
    ],
)
def test_bad_directories_raise_user_errors(tmp_path, setup, match):
    root = tmp_path / "corpus"
    if setup != "missing":
        root.mkdir()
    if setup == "binary":
        for i in range(3):
            (root / f"blob{i}.bin").write_bytes(b"\x00\x01\x02" * 100)
    if setup == "one_file":
        (root / "only.txt").write_text("hello world " * 100)
    if setup == "tiny":
        for i in range(4):
            (root / f"f{i}.txt").write_text("hi")
    with pytest.raises(UserError, match=match) as info:
        data_lib.load("text:dir", str(root), context=16)
    assert "corpus" in str(info.value)  # names the directory


def test_option_and_source_errors(tmp_path):
    with pytest.raises(UserError, match="config.data.dir"):
        data_lib.load("text:dir")
    with pytest.raises(UserError, match="text:code, text:prose"):
        data_lib.load("text:poetry")
    with pytest.raises(UserError, match="context"):
        data_lib.load("text:code", context=0)
    with pytest.raises(UserError, match="unknown text data option"):
        data_lib.load("text:code", contxt=8)
    with pytest.raises(UserError, match="mix"):
        data_lib.load("text:mixed", mix=1.5)
    with pytest.raises(UserError, match="not config.data.dir"):
        data_lib.load("text:mixed", str(tmp_path))
    with pytest.raises(UserError, match=r"config.data.code_dir.*does not exist"):
        data_lib.load("text:mixed", code_dir=str(tmp_path / "nope"))
