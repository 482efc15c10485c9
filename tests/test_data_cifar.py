"""CIFAR-10/100 readers on small files written in the official "python version" format.

The official batches were pickled by Python 2 (protocol 2): dict keys and other strings are
py2 ``str`` (read back as bytes with ``encoding="bytes"``) and arrays reference
``numpy.core.multiarray._reconstruct``. `_Py2Pickler` writes exactly that; files written by
Python 3's own ``pickle.dump(..., protocol=2)`` (bytes as ``_codecs.encode``) are tested too.
"""
from __future__ import annotations

import io
import os
import pickle
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from catapult.data import UnsafePickleError, load_cifar10, load_cifar100, load_dataset
from catapult.data.cifar import CIFAR10_URL, CIFAR100_URL
from catapult.data.safe_pickle import safe_loads

_NP_RECONSTRUCT = np.zeros(0).__reduce__()[0]


class _Py2Pickler(pickle._Pickler):
    """Protocol-2 pickles as Python 2 + NumPy 1.x wrote them (str/bytes as BINSTRING)."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj):
        raw = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + len(raw).to_bytes(4, "little") + raw)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str
    dispatch[str] = save_py2_str

    def save_global(self, obj, name=None):
        if obj is _NP_RECONSTRUCT:
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
            return
        super().save_global(obj, name)

    dispatch[type(len)] = save_global


def py2_dumps(obj) -> bytes:
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def py3_dumps(obj) -> bytes:
    return pickle.dumps(obj, protocol=2)


def _batch(rng, n, label_keys, num_classes, title):
    d = {b"batch_label": title, b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
         b"filenames": [f"img_{i}.png" for i in range(n)]}
    for key, k in zip(label_keys, num_classes):
        d[key] = rng.integers(0, k, size=n).tolist()
    return d


def make_cifar10(root: Path, dumps=py2_dumps, per_batch=4, n_test=6, seed=0) -> dict:
    """Write cifar-10-batches-py/ under root; return the batches written."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    files = {f"data_batch_{i}": _batch(rng, per_batch, [b"labels"], [10], f"training batch {i} of 5")
             for i in range(1, 6)}
    files["test_batch"] = _batch(rng, n_test, [b"labels"], [10], "testing batch 1 of 1")
    files["batches.meta"] = {b"num_cases_per_batch": per_batch, b"num_vis": 3072,
                             b"label_names": [f"class{k}" for k in range(10)]}
    for name, obj in files.items():
        (folder / name).write_bytes(dumps(obj))
    return files


def make_cifar100(root: Path, dumps=py2_dumps, n_train=9, n_test=5, seed=1) -> dict:
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    keys, ks = [b"fine_labels", b"coarse_labels"], [100, 20]
    files = {"train": _batch(rng, n_train, keys, ks, "training batch 1 of 1"),
             "test": _batch(rng, n_test, keys, ks, "testing batch 1 of 1"),
             "meta": {b"fine_label_names": [f"fine{k}" for k in range(100)],
                      b"coarse_label_names": [f"coarse{k}" for k in range(20)]}}
    for name, obj in files.items():
        (folder / name).write_bytes(dumps(obj))
    return files


def make_targz(folder: Path, archive: Path) -> Path:
    """Pack like the official archive: members '<dirname>/<file>', in a scrambled order."""
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=folder.name, recursive=False)
        for f in sorted(folder.iterdir(), key=lambda p: p.name[::-1]):
            tar.add(f, arcname=f"{folder.name}/{f.name}")
    return archive


def _expected(files, names, label_key):
    data = np.concatenate([files[n][b"data"] for n in names])
    labels = np.concatenate([files[n][label_key] for n in names])
    return data, labels


def _np_standardize(data: np.ndarray) -> np.ndarray:
    x = data.astype(np.float64)
    return ((x - x.mean(1, keepdims=True)) / x.std(1, keepdims=True)).reshape(-1, 3, 32, 32)


@pytest.mark.parametrize("dumps", [py2_dumps, py3_dumps], ids=["py2-format", "py3-protocol2"])
def test_cifar10_reads_every_layout(tmp_path, dumps):
    files = make_cifar10(tmp_path / "parent", dumps)
    folder = tmp_path / "parent" / "cifar-10-batches-py"
    archive = make_targz(folder, tmp_path / "cifar-10-python.tar.gz")
    (tmp_path / "holder").mkdir()
    shutil.copy(archive, tmp_path / "holder" / archive.name)

    train_x, train_y = _expected(files, [f"data_batch_{i}" for i in range(1, 6)], b"labels")
    test_x, test_y = _expected(files, ["test_batch"], b"labels")
    for root in (folder, tmp_path / "parent", archive, tmp_path / "holder", str(archive)):
        split = load_cifar10(root)
        assert split.name == "cifar10" and split.num_classes == 10
        assert split.x_train.shape == (20, 3, 32, 32) and split.x_test.shape == (6, 3, 32, 32)
        assert split.x_train.dtype == torch.float32 and split.y_train.dtype == torch.int64
        np.testing.assert_allclose(split.x_train.numpy(), _np_standardize(train_x), atol=1e-5)
        np.testing.assert_allclose(split.x_test.numpy(), _np_standardize(test_x), atol=1e-5)
        np.testing.assert_array_equal(split.y_train.numpy(), train_y)
        np.testing.assert_array_equal(split.y_test.numpy(), test_y)
        assert split.classes == tuple(f"class{k}" for k in range(10))

    raw = load_cifar10(archive, standardize=False)
    # channel-major rows: entries 0..1023 are the red plane, row-major
    np.testing.assert_allclose(raw.x_train[1, 0].numpy() * 255, train_x[1, :1024].reshape(32, 32), atol=1e-4)
    np.testing.assert_allclose(raw.x_train[1, 2].numpy() * 255, train_x[1, 2048:].reshape(32, 32), atol=1e-4)


def test_cifar10_first_n_reads_only_the_batches_needed(tmp_path):
    files = make_cifar10(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    for i in (3, 4, 5):
        (folder / f"data_batch_{i}").unlink()
    split = load_cifar10(tmp_path, n_train=6, n_test=2)  # batches of 4: needs 1 and 2 only
    x, y = _expected(files, ["data_batch_1", "data_batch_2"], b"labels")
    np.testing.assert_allclose(split.x_train.numpy(), _np_standardize(x[:6]), atol=1e-5)
    np.testing.assert_array_equal(split.y_train.numpy(), y[:6])
    assert split.n_test == 2
    via_registry = load_dataset("cifar10", root=tmp_path, n_train=6, n_test=2)
    assert torch.equal(via_registry.x_train, split.x_train)
    with pytest.raises(FileNotFoundError, match=r"data_batch_3 is missing"):
        load_cifar10(tmp_path)


def test_cifar_too_many_samples_requested(tmp_path):
    make_cifar10(tmp_path)
    with pytest.raises(ValueError, match="n_train=21 exceeds the 20"):
        load_cifar10(tmp_path, n_train=21)
    with pytest.raises(ValueError, match="n_test=7 exceeds the 6"):
        load_cifar10(tmp_path, n_test=7)


def test_cifar_zero_samples_is_an_empty_part(tmp_path):
    # n_train=0 is allowed (check_count) and read no batch, but standardising the empty part raised
    # "cannot reshape tensor of 0 elements into shape [0, -1]"
    make_cifar10(tmp_path)
    split = load_cifar10(tmp_path, n_train=0, n_test=2)
    assert tuple(split.x_train.shape) == (0, 3, 32, 32) and tuple(split.y_train.shape) == (0,)
    assert split.n_test == 2
    assert tuple(load_cifar10(tmp_path, n_train=1, n_test=0).x_test.shape) == (0, 3, 32, 32)


@pytest.mark.parametrize("use_archive", [False, True])
def test_cifar100_fine_and_coarse(tmp_path, use_archive):
    files = make_cifar100(tmp_path)
    root = tmp_path
    if use_archive:
        root = make_targz(tmp_path / "cifar-100-python", tmp_path / "cifar-100-python.tar.gz")
    fine = load_cifar100(root)
    assert fine.name == "cifar100" and fine.num_classes == 100
    assert fine.x_train.shape == (9, 3, 32, 32) and fine.x_test.shape == (5, 3, 32, 32)
    np.testing.assert_array_equal(fine.y_train.numpy(), files["train"][b"fine_labels"])
    np.testing.assert_allclose(fine.x_test.numpy(), _np_standardize(files["test"][b"data"]), atol=1e-5)
    assert fine.classes[3] == "fine3"
    coarse = load_cifar100(root, n_train=4, labels="coarse")
    assert coarse.num_classes == 20 and coarse.n_train == 4
    np.testing.assert_array_equal(coarse.y_train.numpy(), files["train"][b"coarse_labels"][:4])
    assert coarse.classes[19] == "coarse19"
    assert torch.equal(load_dataset("cifar100", root=root, labels="coarse").y_test, coarse.y_test)
    with pytest.raises(ValueError, match="'fine' or 'coarse'"):
        load_cifar100(root, labels="medium")


def test_the_other_cifars_archive_is_named_not_called_incomplete(tmp_path):
    # CIFAR-100's archive read as CIFAR-10 said "the CIFAR-10 files are incomplete. Fetch ... again"
    make_cifar100(tmp_path / "a")
    make_cifar10(tmp_path / "b")
    c100 = make_targz(tmp_path / "a" / "cifar-100-python", tmp_path / "cifar-100-python.tar.gz")
    c10 = make_targz(tmp_path / "b" / "cifar-10-batches-py", tmp_path / "cifar-10-python.tar.gz")
    with pytest.raises(FileNotFoundError, match=r"data_batch_1 is missing\. It is the CIFAR-100 archive") as info:
        load_cifar10(c100)
    assert "incomplete" not in str(info.value)
    with pytest.raises(FileNotFoundError, match=r"train is missing\. It is the CIFAR-10 archive"):
        load_cifar100(c10)
    with tarfile.open(tmp_path / "deeper.tar.gz", "w:gz") as tar:  # one folder too deep: say what it holds
        tar.add(tmp_path / "b" / "cifar-10-batches-py", arcname="data/cifar-10-batches-py")
    with pytest.raises(FileNotFoundError, match=r"holds no cifar-10-batches-py/ folder \(its folders: data\)"):
        load_cifar10(tmp_path / "deeper.tar.gz")


def test_missing_dataset_names_every_path_and_the_download(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError) as info:
        load_cifar10(tmp_path)
    msg = str(info.value)
    for path in (tmp_path / "test_batch", tmp_path / "cifar-10-batches-py" / "test_batch",
                 tmp_path / "cifar-10-python.tar.gz"):
        assert str(path) in msg
    assert CIFAR10_URL in msg

    with pytest.raises(FileNotFoundError) as info:
        load_cifar100(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(info.value) and CIFAR100_URL in str(info.value)

    # root=None searches $CATAPULT_DATA, then ./data
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CATAPULT_DATA", str(tmp_path / "env_dir"))
    with pytest.raises(FileNotFoundError) as info:
        load_cifar10()
    assert str(tmp_path / "env_dir") in str(info.value) and "data" in str(info.value)
    make_cifar10(tmp_path / "env_dir")
    assert load_cifar10().n_train == 20


class _Evil:
    """Unpickling this runs `os.system` (creating a sentinel file) under plain pickle."""

    def __init__(self, sentinel: Path):
        self.sentinel = sentinel

    def __reduce__(self):
        return os.system, (f"touch '{self.sentinel}'",)


def test_planted_malicious_pickle_is_refused_and_not_run(tmp_path):
    # Show the planted pickle is live: plain pickle would run it.
    proof = tmp_path / "proof_plain_pickle_runs_it"
    pickle.loads(pickle.dumps({b"data": _Evil(proof)}, protocol=2))
    assert proof.exists()

    make_cifar10(tmp_path / "d")
    sentinel = tmp_path / "SENTINEL"
    evil_file = tmp_path / "d" / "cifar-10-batches-py" / "data_batch_1"
    evil_file.write_bytes(pickle.dumps({b"data": _Evil(sentinel), b"labels": [0]}, protocol=2))
    with pytest.raises(UnsafePickleError) as info:
        load_cifar10(tmp_path / "d")
    msg = str(info.value)
    assert str(evil_file) in msg and f"{os.system.__module__}.system" in msg
    assert not sentinel.exists()

    archive = make_targz(tmp_path / "d" / "cifar-10-batches-py", tmp_path / "evil.tar.gz")
    with pytest.raises(UnsafePickleError, match=r"evil\.tar\.gz::cifar-10-batches-py/data_batch_1"):
        load_cifar10(archive)
    assert not sentinel.exists()

    # other ways to smuggle a callable are refused too
    for payload in (pickle.dumps(print, protocol=2), pickle.dumps(eval, protocol=4),
                    pickle.dumps(np.load, protocol=0)):
        with pytest.raises(UnsafePickleError, match="refused to load the global"):
            safe_loads(payload, source="x.pkl")


def test_corrupt_or_wrong_batches_name_the_file(tmp_path):
    make_cifar10(tmp_path)
    target = tmp_path / "cifar-10-batches-py" / "test_batch"
    good = target.read_bytes()
    target.write_bytes(good[: len(good) // 2])
    with pytest.raises(pickle.UnpicklingError, match="test_batch: not a valid pickle"):
        load_cifar10(tmp_path)
    target.write_bytes(py2_dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}))
    with pytest.raises(ValueError, match=r"test_batch: 'data' must be a uint8 array of shape \(N, 3072\)"):
        load_cifar10(tmp_path)
    target.write_bytes(py2_dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}))
    with pytest.raises(ValueError, match=r"test_batch: 'labels' values must lie in \[0, 10\)"):
        load_cifar10(tmp_path)
    target.write_bytes(py2_dumps({b"pixels": np.zeros((2, 3072), np.uint8)}))
    with pytest.raises(ValueError, match="found \\['pixels'\\]"):
        load_cifar10(tmp_path)
    bogus = tmp_path / "not_an_archive.tar.gz"
    bogus.write_bytes(b"hello")
    with pytest.raises(ValueError, match="cannot be read as a tar archive") as caught:
        load_cifar10(bogus)
    assert "\n" not in str(caught.value)  # tarfile's reasons came one per line: a 5-line CLI error


def test_a_meta_file_with_names_that_are_not_utf8_gives_no_class_names(tmp_path):
    # the meta file is optional: one not as expected leaves `classes` None (the data still load);
    # a name that is not UTF-8 raised a UnicodeDecodeError naming no file instead
    files = make_cifar10(tmp_path)
    meta = tmp_path / "cifar-10-batches-py" / "batches.meta"
    meta.write_bytes(py2_dumps({b"label_names": [b"\xff\xfe"] * 10}))
    split = load_cifar10(tmp_path)
    assert split.classes is None
    np.testing.assert_array_equal(split.y_test.numpy(), files["test_batch"][b"labels"])


def test_labels_that_would_expand_to_gigabytes_are_refused_before_numpy_sees_them(tmp_path):
    # one 4000-int list shared 10^6 times pickles to ~70 KB and asked np.asarray for 30 GiB
    make_cifar10(tmp_path)
    target = tmp_path / "cifar-10-batches-py" / "test_batch"
    row = [0] * 4000
    block = [row] * 1000
    target.write_bytes(py3_dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [block] * 1000}))
    assert target.stat().st_size < 200_000
    with pytest.raises(ValueError, match=r"test_batch: 'labels' must hold 2 integer labels, got a list of 1000 items"):
        load_cifar10(tmp_path)
    target.write_bytes(py3_dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, True]}))
    with pytest.raises(ValueError, match="'labels' must hold 2 integer labels"):
        load_cifar10(tmp_path)


def test_a_key_that_is_not_utf8_is_named_not_a_decode_error(tmp_path):
    make_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(py3_dumps({b"\xff": 1}))
    with pytest.raises(ValueError, match="test_batch: a CIFAR-10 batch needs the keys 'data' and 'labels'"):
        load_cifar10(tmp_path)


def test_a_read_error_names_the_batch_file(tmp_path, monkeypatch):
    # an I/O error while reading carries no file name: the CLI printed "Input/output error" alone
    make_cifar10(tmp_path)

    def failing_read(self):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(Path, "read_bytes", failing_read)
    with pytest.raises(OSError, match=r"cifar-10-batches-py/data_batch_1: cannot be read \(Input/output error\)"):
        load_cifar10(tmp_path)


def test_a_batch_appended_to_the_archive_again_is_read_as_tar_extracts_it(tmp_path):
    # `tar -rf` appends a second copy of a file; `tar -x` leaves the last, catapult read the first
    make_cifar10(tmp_path / "src")
    folder = tmp_path / "src" / "cifar-10-batches-py"
    archive = tmp_path / "cifar-10-python.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(folder, arcname=folder.name)
    (folder / "data_batch_1").write_bytes(py2_dumps({b"data": np.zeros((4, 3072), np.uint8), b"labels": [3] * 4}))
    with tarfile.open(archive, "a") as tar:
        tar.add(folder / "data_batch_1", arcname=f"{folder.name}/data_batch_1")
    # the folder now holds what `tar -x` of the archive leaves
    from_archive, extracted = load_cifar10(archive, n_train=4), load_cifar10(tmp_path / "src", n_train=4)
    assert from_archive.y_train.tolist() == extracted.y_train.tolist() == [3, 3, 3, 3]
