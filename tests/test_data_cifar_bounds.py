"""CIFAR reader edges: a request that ends exactly at a batch file's end reads no further file,
the size bound on a batch file lets an official-sized CIFAR-100 ``train`` file through, and a
``.tar.gz`` in the official member order is decompressed once after its listing."""
from __future__ import annotations

import numpy as np
import pytest
from test_data_cifar import make_cifar10, py2_dumps

from catapult.data import load_cifar10
from catapult.data.cifar import _CIFAR10, _CIFAR100, CorruptDataError, _read_checked


def test_n_train_equal_to_the_first_batch_reads_that_batch_alone(tmp_path):
    # batches of 4 images: n_train = 4 is all of data_batch_1; data_batch_2 need not exist
    files = make_cifar10(tmp_path)
    for i in (2, 3, 4, 5):
        (tmp_path / "cifar-10-batches-py" / f"data_batch_{i}").unlink()
    split = load_cifar10(tmp_path, n_train=4, n_test=1)
    assert split.y_train.tolist() == list(files["data_batch_1"][b"labels"])
    with pytest.raises(FileNotFoundError, match="data_batch_2 is missing"):
        load_cifar10(tmp_path, n_train=5, n_test=1)


class _SizedSource:
    """A source that reports a file of ``size`` bytes and reads back a marker."""

    def __init__(self, size: int) -> None:
        self._size = size

    def size(self, name: str) -> int:
        return self._size

    def read(self, name: str) -> bytes:
        return b"read"

    def describe(self, name: str) -> str:
        return name


def _official_size(rows: int, label_keys: tuple[bytes, ...], filename: str) -> int:
    """Bytes of a Python-2 pickle of a batch with the official keys and ``rows`` images: the
    pickle of one image's batch with every other field full-sized, plus the other rows' pixels."""
    one = {b"batch_label": b"training batch 1 of 1", b"data": np.zeros((1, 3072), np.uint8),
           b"filenames": [filename.format(i).encode() for i in range(rows)]}
    for key in label_keys:
        one[key] = [99] * rows
    return len(py2_dumps(one)) + (rows - 1) * 3072


def test_an_official_sized_cifar100_train_file_is_not_refused_as_too_large():
    # 50,000 file names like b'bos_taurus_s_000507.png' and two label lists take ~1.5 MB beyond
    # the pixels: more than the 1 MB allowance alone
    size = _official_size(50_000, (b"fine_labels", b"coarse_labels"), "bos_taurus_s_{:06d}.png")
    assert size > 50_000 * 3072 + 1_000_000
    assert _read_checked(_SizedSource(size), _CIFAR100, "train") == b"read"
    size10 = _official_size(10_000, (b"labels",), "leptodactylus_pentadactylus_s_{:06d}.png")
    assert _read_checked(_SizedSource(size10), _CIFAR10, "data_batch_1") == b"read"
    with pytest.raises(CorruptDataError, match="more than a CIFAR-100 'train' file can be"):
        _read_checked(_SizedSource(2 * size), _CIFAR100, "train")


def test_a_gzip_archive_is_decompressed_once_after_its_listing_whatever_its_member_order(tmp_path, monkeypatch):
    # the official archive holds data_batch_4, readme.html, test_batch, data_batch_3, batches.meta,
    # data_batch_2, data_batch_5, data_batch_1: reading the batches in name order went back in the
    # stream at every file behind the last one read, and gzip then decompressed again from the start
    import gzip
    import io
    import tarfile

    files = make_cifar10(tmp_path / "d")
    folder = tmp_path / "d" / "cifar-10-batches-py"
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name in ("data_batch_4", "readme.html", "test_batch", "data_batch_3", "batches.meta", "data_batch_2",
                     "data_batch_5", "data_batch_1"):
            raw = (folder / name).read_bytes() if name != "readme.html" else b"<html></html>"
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    rewinds = []
    real = gzip._GzipReader._rewind
    monkeypatch.setattr(gzip._GzipReader, "_rewind", lambda self: rewinds.append(1) or real(self))
    split = load_cifar10(archive, standardize=False)
    want = np.concatenate([files[f"data_batch_{i}"][b"data"] for i in range(1, 6)])
    np.testing.assert_array_equal(split.x_train.reshape(-1, 3072).mul(255).round().numpy(), want)
    assert split.y_test.tolist() == list(files["test_batch"][b"labels"]) and split.classes[9] == "class9"
    assert len(rewinds) == 1   # the listing reads to the end; one pass from the start reads every file


def test_reading_ahead_in_an_archive_reads_only_the_files_of_the_format(tmp_path):
    # the one forward pass holds the files it reads: any other file there (up to 10,000 members of
    # up to 1 MB, a few KB each when packed) would be held too
    import io
    import tarfile
    import tracemalloc

    files = make_cifar10(tmp_path / "d")
    folder = tmp_path / "d" / "cifar-10-batches-py"
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for i in range(40):
            info = tarfile.TarInfo(f"cifar-10-batches-py/extra_{i}")
            info.size = 1_000_000   # the most a file the format does not name may take
            tar.addfile(info, io.BytesIO(bytes(info.size)))
        for f in sorted(folder.iterdir()):
            tar.add(f, arcname=f"{folder.name}/{f.name}")
    assert archive.stat().st_size < 200_000
    tracemalloc.start()
    try:
        split = load_cifar10(archive, n_train=4, n_test=1)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert split.y_train.tolist() == list(files["data_batch_1"][b"labels"])
    assert peak < 10 << 20   # the 40 MB of other files are not held
