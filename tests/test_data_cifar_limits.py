"""The CIFAR archive reader's limits at their bounds (mutation pass 23): an extended header one
byte over ``_MAX_EXTENDED_HEADER`` and one member over ``_MAX_MEMBERS`` are refused, as the far
larger ones of test_data_untrusted are."""
from __future__ import annotations

import tarfile
import zlib

import pytest

from catapult.data import load_cifar10, load_cifar100
from catapult.data.cifar import _MAX_EXTENDED_HEADER, _MAX_MEMBERS, CorruptDataError


def _gzip(*chunks: bytes) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    return b"".join(packer.compress(c) for c in chunks) + packer.compress(bytes(10240)) + packer.flush()


def test_an_extended_header_one_byte_over_the_limit_is_refused(tmp_path):
    claimed = _MAX_EXTENDED_HEADER + 1
    assert claimed == 1_048_577
    header = tarfile.TarInfo("././@PaxHeader")
    header.type, header.size = tarfile.XHDTYPE, claimed
    archive = tmp_path / "cifar-10-python.tar.gz"
    archive.write_bytes(_gzip(header.tobuf(format=tarfile.USTAR_FORMAT), bytes(claimed + 511 & ~511)))
    with pytest.raises(CorruptDataError, match=r"extended header at offset 0 claims 1,048,577 bytes \(at most 1,048,576\)"):
        load_cifar10(archive)


def test_one_member_more_than_the_limit_is_refused(tmp_path):
    assert _MAX_MEMBERS == 10_000
    header = tarfile.TarInfo("x").tobuf(format=tarfile.USTAR_FORMAT)
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(_gzip(*[header] * (_MAX_MEMBERS + 1)))
    with pytest.raises(CorruptDataError, match=r"more than 10,000 members"):
        load_cifar10(tmp_path)
    # as many as the limit are listed: the archive is then read as one without the CIFAR-10 files
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(_gzip(*[header] * _MAX_MEMBERS))
    with pytest.raises(FileNotFoundError, match="data_batch_1 is missing"):
        load_cifar10(tmp_path)


def test_an_archive_of_bare_batch_files_is_read_as_the_official_layout(tmp_path):
    # members "<file>" with no folder are the layout's files too (the module's docstring): the
    # split is that of the folder, labels and pixels alike
    from test_data_cifar import make_cifar10

    files = make_cifar10(tmp_path / "src", per_batch=4, n_test=6)
    folder = tmp_path / "src" / "cifar-10-batches-py"
    archive = tmp_path / "bare.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for f in sorted(folder.iterdir()):
            tar.add(f, arcname=f.name)
    split = load_cifar10(archive, n_train=20, n_test=6, standardize=False)
    labels = [v for i in range(1, 6) for v in files[f"data_batch_{i}"][b"labels"]]
    assert split.y_train.tolist() == labels
    assert split.y_test.tolist() == list(files["test_batch"][b"labels"])
    assert split.classes == tuple(f"class{k}" for k in range(10))
    # pixels: the first image's first value, read as x / 255 in float32
    assert float(split.x_train[0, 0, 0, 0]) == pytest.approx(files["data_batch_1"][b"data"][0, 0] / 255.0, rel=1e-6)


def test_an_archive_whose_files_lie_deeper_in_the_own_folder_is_not_called_the_own_archive(tmp_path):
    # "cifar-10-batches-py/old/data_batch_1" is no file of the layout; the folder is CIFAR-10's own,
    # so the advice is not "It is the CIFAR-10 archive: load it as CIFAR-10" (it was being loaded so)
    from test_data_cifar import make_cifar10

    make_cifar10(tmp_path / "src")
    folder = tmp_path / "src" / "cifar-10-batches-py"
    archive = tmp_path / "deep.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for f in sorted(folder.iterdir()):
            tar.add(f, arcname=f"cifar-10-batches-py/old/{f.name}")
    with pytest.raises(FileNotFoundError) as caught:
        load_cifar10(archive)
    message = str(caught.value)
    assert "data_batch_1 is missing" in message
    assert "load it as" not in message
    assert "It holds no cifar-10-batches-py/ folder" in message


def test_a_member_larger_than_its_format_allows_is_refused_without_being_read(tmp_path, monkeypatch):
    # data_batch_2 at one byte over _CIFAR10.max_bytes: the read-ahead of the layout's files at the
    # first read (data_batch_1's) skips it (each is read into memory whole), and its refusal comes
    # before any read of it
    import io

    from test_data_cifar import make_cifar10

    from catapult.data import cifar

    make_cifar10(tmp_path / "src")
    folder = tmp_path / "src" / "cifar-10-batches-py"
    limit = cifar._CIFAR10.max_bytes("data_batch_2")
    assert limit == 10_000 * (3072 + 256) + 1_000_000
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder / "data_batch_1", arcname="cifar-10-batches-py/data_batch_1")
        info = tarfile.TarInfo("cifar-10-batches-py/data_batch_2")
        info.size = limit + 1
        tar.addfile(info, io.BytesIO(bytes(limit + 1)))
    read = []
    original = cifar._TarSource._read_member
    monkeypatch.setattr(cifar._TarSource, "_read_member", lambda self, name: read.append(name) or original(self, name))
    with pytest.raises(CorruptDataError, match=r"data_batch_2: 34,280,001 bytes, more than a CIFAR-10 'data_batch_2' file can be"):
        load_cifar10(archive)
    assert read == ["data_batch_1"]


def test_a_negative_label_is_refused_naming_the_file(tmp_path):
    # -1 indexes the last class in a one-hot or a loss's gather: the range check has two ends
    from test_data_cifar import make_cifar10, py2_dumps

    files = make_cifar10(tmp_path)
    batch = dict(files["data_batch_1"])
    batch[b"labels"] = [-1] + list(batch[b"labels"])[1:]
    (tmp_path / "cifar-10-batches-py" / "data_batch_1").write_bytes(py2_dumps(batch))
    with pytest.raises(ValueError, match=r"data_batch_1: 'labels' values must lie in \[0, 10\), got \[-1, "):
        load_cifar10(tmp_path)


def test_a_file_of_exactly_its_formats_largest_size_is_read():
    # the bound is the largest a file may be: size == limit is read, one byte more refused unread
    from catapult.data.cifar import _CIFAR10, _read_checked

    class Sized:
        def __init__(self, size):
            self.bytes = size

        def size(self, name):
            return self.bytes

        def read(self, name):
            return b"read"

        def describe(self, name):
            return name

    limit = _CIFAR10.max_bytes("test_batch")
    assert _read_checked(Sized(limit), _CIFAR10, "test_batch") == b"read"
    with pytest.raises(CorruptDataError, match=r"test_batch: 34,280,001 bytes, more than a CIFAR-10 'test_batch' file"):
        _read_checked(Sized(limit + 1), _CIFAR10, "test_batch")


def test_cifar100_coarse_labels_name_their_split_as_such(tmp_path):
    from test_data_cifar import make_cifar100

    make_cifar100(tmp_path)
    assert load_cifar100(tmp_path, labels="coarse").name == "cifar100-coarse"
    assert load_cifar100(tmp_path, labels="fine").name == "cifar100"
