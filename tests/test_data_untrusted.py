"""Untrusted CIFAR files (issue 13): arrays only through NumPy's own pickling paths, sizes
checked against the format before anything is allocated, legitimate protocol-5 / NumPy-2
pickles accepted, corrupt archives reported as corrupt, and the CLI exits 2 without a traceback."""
from __future__ import annotations

import gzip
import io
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest

from catapult import cli
from catapult.data import CorruptDataError, UnsafePickleError, load_cifar10
from catapult.data.safe_pickle import safe_loads
from test_data_cifar import make_cifar10, make_targz, py2_dumps


def _unicode(text: str) -> bytes:
    raw = text.encode()
    return pickle.BINUNICODE + struct.pack("<I", len(raw)) + raw


def _global(module: str, name: str) -> bytes:
    return pickle.GLOBAL + f"{module}\n{name}\n".encode()


def _tuple(*items: bytes) -> bytes:
    return pickle.MARK + b"".join(items) + pickle.TUPLE


def _int(n: int) -> bytes:
    return pickle.BININT + struct.pack("<i", n)


def _dict_pickle(data_value: bytes, labels: int = 0) -> bytes:
    """``{b'data': <data_value>, b'labels': []}`` with ``data_value`` given as raw opcodes."""
    return (pickle.PROTO + b"\x02" + pickle.EMPTY_DICT + pickle.MARK
            + pickle.SHORT_BINBYTES + b"\x04data" + data_value
            + pickle.SHORT_BINBYTES + b"\x06labels" + pickle.EMPTY_LIST
            + pickle.SETITEMS + pickle.STOP)


def _uint8_dtype() -> bytes:
    return _global("numpy", "dtype") + _tuple(_unicode("u1")) + pickle.REDUCE


def test_a_direct_call_of_numpy_ndarray_is_refused_unallocated():
    # ndarray((20000, 3072), uint8): uninitialised heap memory under the old allow-list
    payload = _dict_pickle(_global("numpy", "ndarray")
                           + _tuple(_tuple(_int(20_000), _int(3072)), _uint8_dtype()) + pickle.REDUCE)
    assert len(payload) < 240
    with pytest.raises(UnsafePickleError, match="calls numpy.ndarray directly"):
        safe_loads(payload, source="data_batch_1")


def test_reconstruct_is_allowed_only_as_numpy_writes_it():
    big = _global("numpy.core.multiarray", "_reconstruct") + _tuple(
        _global("numpy", "ndarray"), _tuple(_int(20_000), _int(3072)), pickle.SHORT_BINBYTES + b"\x01b"
    ) + pickle.REDUCE
    with pytest.raises(UnsafePickleError, match="_reconstruct"):
        safe_loads(_dict_pickle(big), source="x")
    # the state must hold exactly prod(shape) * itemsize bytes
    empty = _global("numpy.core.multiarray", "_reconstruct") + _tuple(
        _global("numpy", "ndarray"), _tuple(_int(0)), pickle.SHORT_BINBYTES + b"\x01b") + pickle.REDUCE
    state = _tuple(_int(1), _tuple(_int(10_000), _int(3072)), _uint8_dtype(), pickle.NEWFALSE,
                   pickle.SHORT_BINBYTES + b"\x05hello")
    with pytest.raises(UnsafePickleError, match="holds 5 bytes"):
        safe_loads(_dict_pickle(empty + state + pickle.BUILD), source="x")


@pytest.mark.parametrize("payload, words", [
    (_global("builtins", "bytes") + _tuple(_int(1000)) + pickle.REDUCE, r"bytes\(\) with arguments"),
    (_global("_codecs", "encode") + _tuple(_unicode("x"), _unicode("zlib")) + pickle.REDUCE, "latin1"),
    (_global("numpy", "dtype") + _tuple(_unicode("O")) + pickle.REDUCE, "dtype 'O'"),
])
def test_other_allowed_globals_are_checked_too(payload, words):
    with pytest.raises(UnsafePickleError, match=words):
        safe_loads(_dict_pickle(payload), source="x")


def _build(target: bytes, attribute: str, value: bytes) -> bytes:
    """``target`` BUILT with the slot state ``{attribute: value}``, then dropped: setattr on it."""
    return (target + pickle.NONE + pickle.EMPTY_DICT + _unicode(attribute) + value + pickle.SETITEM
            + pickle.TUPLE2 + pickle.BUILD + pickle.POP)


@pytest.mark.parametrize("target", [_global("numpy", "ndarray"), _global("numpy.core.multiarray", "_reconstruct"),
                                    _global("_codecs", "encode"), _global("numpy", "dtype")])
def test_a_pickle_cannot_set_attributes_of_the_allowed_globals(target):
    # BUILD on an allowed global set its attributes for the rest of the process: the ndarray stand-in
    # became a dtype (numpy.ndarray(...) then failed as "not callable"), a function took new __defaults__
    attack = _build(target, "__class__", _global("numpy", "dtype")) + _build(target, "__defaults__", _tuple(_int(1)))
    with pytest.raises(UnsafePickleError, match="sets the state of"):
        safe_loads(_dict_pickle(attack), source="x")
    call = _dict_pickle(_global("numpy", "ndarray") + _tuple(_tuple(_int(2))) + pickle.REDUCE)
    with pytest.raises(UnsafePickleError, match="calls numpy.ndarray directly"):
        safe_loads(call, source="x")


@pytest.mark.parametrize("value", [_global("numpy", "dtype"), _global("_codecs", "encode"), _global("builtins", "bytes")])
def test_an_allowed_global_left_in_the_data_is_refused(value):
    # a bare numpy.dtype or _codecs.encode came back in the loaded dict as catapult's own stand-in
    with pytest.raises(UnsafePickleError, match="in the data itself"):
        safe_loads(_dict_pickle(value), source="x")


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_pickles_numpy2_writes_load_at_every_protocol(tmp_path, protocol):
    files = make_cifar10(tmp_path, lambda obj: pickle.dumps(obj, protocol=protocol))
    split = load_cifar10(tmp_path, standardize=False)
    want = np.concatenate([files[f"data_batch_{i}"][b"data"] for i in range(1, 6)])
    np.testing.assert_array_equal((split.x_train.numpy() * 255).round().reshape(-1, 3072), want)
    assert split.classes == tuple(f"class{k}" for k in range(10))
    # arrays of other plain dtypes, either memory order, come back equal too
    for array in (np.arange(12, dtype=">f8").reshape(3, 4), np.asfortranarray(np.ones((2, 3), np.int16))):
        got = safe_loads(pickle.dumps({"a": array}, protocol=protocol))["a"]
        np.testing.assert_array_equal(got, array)
        assert got.dtype == array.dtype


def test_a_batch_with_more_rows_than_the_format_is_refused(tmp_path):
    make_cifar10(tmp_path)
    target = tmp_path / "cifar-10-batches-py" / "test_batch"
    target.write_bytes(py2_dumps({b"data": np.zeros((10_001, 3072), np.uint8), b"labels": [0] * 10_001}))
    with pytest.raises(ValueError, match="N <= 10,000"):
        load_cifar10(tmp_path)


def test_a_file_larger_than_its_format_is_refused_unread(tmp_path):
    make_cifar10(tmp_path)
    target = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    with open(target, "r+b") as f:
        f.truncate(10 ** 9)  # sparse: costs no disk
    with pytest.raises(CorruptDataError, match="more than a CIFAR-10 'data_batch_1' file can be"):
        load_cifar10(tmp_path)


def _damaged_archive(tmp_path: Path) -> Path:
    """A .tar.gz whose second member header is damaged (tarfile then stops without an error)."""
    make_cifar10(tmp_path / "d")
    plain = make_targz(tmp_path / "d" / "cifar-10-batches-py", tmp_path / "ok.tar.gz")
    raw = bytearray(gzip.decompress(plain.read_bytes()))
    with tarfile.open(fileobj=io.BytesIO(bytes(raw))) as tar:
        second = tar.getmembers()[1].offset
    raw[second + 148:second + 156] = b"garbage!"  # the header's checksum field
    damaged = tmp_path / "cifar-10-python.tar.gz"
    damaged.write_bytes(gzip.compress(bytes(raw)))
    return damaged


def test_a_damaged_archive_is_reported_as_corrupt_not_as_missing_files(tmp_path):
    with pytest.raises(CorruptDataError, match="corrupt or truncated"):
        load_cifar10(_damaged_archive(tmp_path))


def test_a_truncated_archive_is_reported_as_corrupt(tmp_path):
    make_cifar10(tmp_path / "d")
    archive = make_targz(tmp_path / "d" / "cifar-10-batches-py", tmp_path / "a.tar.gz")
    archive.write_bytes(archive.read_bytes()[:-200])
    with pytest.raises(ValueError, match="corrupt or truncated|cannot be read as a tar archive"):
        load_cifar10(archive)


def test_a_truncated_batch_is_reported_as_truncated(tmp_path):
    make_cifar10(tmp_path)
    target = tmp_path / "cifar-10-batches-py" / "test_batch"
    target.write_bytes(target.read_bytes()[:1000])
    with pytest.raises(pickle.UnpicklingError, match="test_batch: not a valid pickle, the file is truncated"):
        load_cifar10(tmp_path)


def test_a_damaged_byte_inside_a_batch_of_the_archive_is_caught_by_the_gzip_crc(tmp_path):
    # incompressible pixels go into deflate's stored blocks, where a damaged byte decodes to another
    # pixel; only the gzip CRC at the stream's end tells, and the reader stopped short of it
    files = make_cifar10(tmp_path / "d", per_batch=40, n_test=40)
    archive = make_targz(tmp_path / "d" / "cifar-10-batches-py", tmp_path / "cifar-10-python.tar.gz")
    good = load_cifar10(archive, standardize=False)
    want = np.concatenate([files[f"data_batch_{i}"][b"data"] for i in range(1, 6)])
    np.testing.assert_array_equal(good.x_train.reshape(200, 3072).mul(255).round().numpy(), want)
    raw = bytearray(archive.read_bytes())
    at = raw.find(files["data_batch_2"][b"data"][20].tobytes())   # a row of pixels, stored verbatim
    assert at > 0
    raw[at + 100] ^= 0x10
    archive.write_bytes(bytes(raw))
    with pytest.raises(CorruptDataError, match="corrupt or truncated.*CRC check failed"):
        load_cifar10(archive, n_train=80, n_test=0)


def test_an_extended_tar_header_claiming_megabytes_is_refused_unread(tmp_path):
    # tarfile reads a pax header whole: 16 KB of .tar.gz claiming a 16 MB header of zeros took 16 MB
    # (the same at 1,000 : 1 for gigabytes), then was called "not a gzip, bzip2, xz or plain tar file"
    import tracemalloc
    import zlib

    claimed = 16 << 20
    header = tarfile.TarInfo("././@PaxHeader")
    header.type, header.size = tarfile.XHDTYPE, claimed
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)   # gzip
    raw = packer.compress(header.tobuf(format=tarfile.USTAR_FORMAT)) + b"".join(
        packer.compress(bytes(1 << 20)) for _ in range(claimed >> 20)) + packer.compress(bytes(10240)) + packer.flush()
    archive = tmp_path / "cifar-10-python.tar.gz"
    archive.write_bytes(raw)
    assert len(raw) < claimed // 500
    tracemalloc.start()
    try:
        with pytest.raises(CorruptDataError, match=r"extended header at offset 0 claims 16,777,216 bytes"):
            load_cifar10(archive)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < claimed // 4


def test_an_archive_of_more_members_than_a_cifar_archive_could_hold_is_refused(tmp_path):
    # a few KB of .tar.gz hold many thousand empty headers, each listed as a Python object: 447 KB
    # of 200,000 took 81 MB and 36 s, then "data_batch_1 is missing"
    import zlib

    header = tarfile.TarInfo("x").tobuf(format=tarfile.USTAR_FORMAT)
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    raw = b"".join(packer.compress(header) for _ in range(20_001)) + packer.compress(bytes(10240)) + packer.flush()
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(raw)
    with pytest.raises(CorruptDataError, match=r"more than 10,000 members \(the official archive has 9\)"):
        load_cifar10(tmp_path)


def _cli(tmp_path, root: Path, capsys) -> tuple[int, str]:
    config = tmp_path / "c.yaml"
    config.write_text(f"data: {{name: cifar10, root: '{root}', n_train: 8, n_test: 4}}\n"
                      "model: {width: 8, depth: 2}\ntrain: {steps: 1}\neval: {sharpness_every: 0}\n")
    code = cli.main(["train", str(config), "--out", str(tmp_path / "run"), "--progress", "none"])
    return code, capsys.readouterr().err


def test_the_cli_reports_bad_cifar_files_with_exit_2(tmp_path, capsys):
    code, err = _cli(tmp_path, _damaged_archive(tmp_path), capsys)
    assert code == 2 and "corrupt or truncated" in err and len(err) < 2000
    make_cifar10(tmp_path / "evil")
    (tmp_path / "evil" / "cifar-10-batches-py" / "data_batch_1").write_bytes(_dict_pickle(
        _global("numpy", "ndarray") + _tuple(_tuple(_int(10), _int(3072))) + pickle.REDUCE))
    code, err = _cli(tmp_path, tmp_path / "evil", capsys)
    assert code == 2 and "calls numpy.ndarray directly" in err and len(err) < 2000
    assert not (tmp_path / "run").exists()


def test_no_module_of_the_package_unpickles_with_plain_pickle():
    # the one reader of pickles is data.safe_pickle (a restricted Unpickler); stop 59's gloo
    # set-up gather had added a plain pickle.loads of another rank's bytes (now JSON)
    import ast

    import catapult

    package = Path(catapult.__file__).parent
    found, paths = [], sorted(package.rglob("*.py"))
    assert len(paths) > 100 and package / "data" / "safe_pickle.py" in paths   # a scan of no files finds nothing
    for path in paths:
        if path.name == "safe_pickle.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in ("pickle", "cPickle", "_pickle") and node.attr in ("load", "loads", "Unpickler")):
                found.append(f"{path.relative_to(package)}:{node.lineno}")
    assert found == []


# ---- mutation pass 21: each check of the stand-ins, by a pickle NumPy never writes that the check alone refuses

def _bytes_op(raw: bytes) -> bytes:
    return pickle.SHORT_BINBYTES + bytes([len(raw)]) + raw


def _reconstructed(shape: bytes, dtype: bytes, raw: bytes, *, head: bytes | None = None,
                   version: bytes = _int(1), fortran: bytes = pickle.NEWFALSE) -> bytes:
    """``_reconstruct(numpy.ndarray, (0,), b'b')`` (or ``head``) BUILT with the array state
    ``(version, shape, dtype, fortran, raw)``: how ``ndarray.__reduce__`` writes an array."""
    if head is None:
        head = _global("numpy.core.multiarray", "_reconstruct") + _tuple(
            _global("numpy", "ndarray"), _tuple(_int(0)), _bytes_op(b"b")) + pickle.REDUCE
    return head + _tuple(version, shape, dtype, fortran, _bytes_op(raw)) + pickle.BUILD


def test_the_array_helper_builds_what_numpy_writes():
    # the helper above is right: the plain case loads as NumPy's own array (so each refusal below is its check's)
    got = safe_loads(_dict_pickle(_reconstructed(_tuple(_int(2), _int(3)), _uint8_dtype(), bytes(range(6)))))[b"data"]
    np.testing.assert_array_equal(got, np.arange(6, dtype=np.uint8).reshape(2, 3))


def _reconstruct_as(cls: bytes, shape: bytes, typecode: bytes) -> bytes:
    return _global("numpy.core.multiarray", "_reconstruct") + _tuple(cls, shape, _bytes_op(typecode)) + pickle.REDUCE


@pytest.mark.parametrize("head", [
    _reconstruct_as(_global("numpy", "dtype"), _tuple(_int(0)), b"b"),       # another class than ndarray
    _reconstruct_as(_global("numpy", "ndarray"), _tuple(_int(20_000), _int(3072)), b"b"),   # another shape
    _reconstruct_as(_global("numpy", "ndarray"), _tuple(_int(0)), b"x"),     # another typecode
])
def test_reconstruct_is_refused_for_any_call_numpy_does_not_write_even_with_a_valid_state(head):
    # mutation pass 21 (SP3-SP5): each of the three arguments was checked by no test (an array state
    # that follows made each such call load)
    payload = _dict_pickle(_reconstructed(_tuple(_int(2)), _uint8_dtype(), b"ab", head=head))
    with pytest.raises(UnsafePickleError, match=r"calls numpy's _reconstruct other than as ndarray.__reduce__ writes it"):
        safe_loads(payload, source="x")


@pytest.mark.parametrize("shape, raw, words", [
    (_tuple(_int(5)), b"abcdef", r"declares an array of shape \(5,\) \(5 bytes\) but holds 6 bytes"),   # more bytes
    (_tuple(_int(-2), _int(-3)), b"abcdef", r"shape \(-2, -3\); expected a tuple of sizes >= 0"),     # negative sizes
    (_tuple(*[_int(1)] * 33), b"a", r"gives an array the shape \(1, 1, 1"),                          # 33 dimensions
])
def test_an_array_state_is_refused_unless_its_shape_and_bytes_agree(shape, raw, words):
    # mutation pass 21 (SP6-SP8): more bytes than the shape holds, negative sizes whose product is the
    # byte count, and 33 dimensions were refused by the code but checked by no test (NumPy read the
    # first two as a corrupt file, took the third)
    with pytest.raises(UnsafePickleError, match=words):
        safe_loads(_dict_pickle(_reconstructed(shape, _uint8_dtype(), raw)), source="x")


def _dtype_with_state(names: bytes) -> bytes:
    return (_global("numpy", "dtype") + _tuple(_unicode("u1"), pickle.NEWFALSE, pickle.NEWTRUE) + pickle.REDUCE
            + _tuple(_int(3), _unicode("|"), pickle.NONE, names, pickle.NONE, _int(-1), _int(-1), _int(0))
            + pickle.BUILD)


def test_a_dtype_state_with_fields_is_refused():
    # mutation pass 21 (SP10): a plain dtype's state has no subarray, names or fields
    ok = safe_loads(_dict_pickle(_reconstructed(_tuple(_int(2)), _dtype_with_state(pickle.NONE), b"ab")))[b"data"]
    np.testing.assert_array_equal(ok, np.array([97, 98], np.uint8))
    with pytest.raises(UnsafePickleError, match="sets a dtype state NumPy does not write"):
        safe_loads(_dict_pickle(_reconstructed(_tuple(_int(2)), _dtype_with_state(_tuple(_unicode("a"))), b"ab")))


@pytest.mark.parametrize("version, fortran", [(_int(2), pickle.NEWFALSE), (_int(1), _int(1))])
def test_an_array_state_of_another_version_or_a_non_bool_order_is_refused(version, fortran):
    # mutation pass 21 (SP12): NumPy writes version 1 and a bool is_fortran
    payload = _dict_pickle(_reconstructed(_tuple(_int(2)), _uint8_dtype(), b"ab", version=version, fortran=fortran))
    with pytest.raises(UnsafePickleError, match="sets an array state NumPy does not write"):
        safe_loads(payload, source="x")


def test_frombuffer_is_refused_for_a_memory_order_other_than_c_or_f():
    # mutation pass 21 (SP13): order 'A' (which numpy's reshape takes) was checked by no test
    def call(order: str) -> bytes:
        return _dict_pickle(_global("numpy.core.numeric", "_frombuffer") + _tuple(
            _bytes_op(b"abcd"), _uint8_dtype(), _tuple(_int(2), _int(2)), _unicode(order)) + pickle.REDUCE)

    np.testing.assert_array_equal(safe_loads(call("F"))[b"data"], np.array([[97, 99], [98, 100]], np.uint8))
    with pytest.raises(UnsafePickleError, match="gives an array the memory order 'A'"):
        safe_loads(call("A"), source="x")


def test_the_allow_list_is_the_cifar_formats_globals_and_nothing_else():
    # mutation pass 21 (SP16, SP17): an entry added to ALLOWED_GLOBALS (builtins.getattr, numpy.frombuffer)
    # passed every test, which named only globals outside the list
    from catapult.data.safe_pickle import ALLOWED_GLOBALS

    assert set(ALLOWED_GLOBALS) == {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"), ("builtins", "bytes"), ("__builtin__", "bytes")}
    for name in (("builtins", "getattr"), ("numpy", "frombuffer"), ("numpy", "load")):
        with pytest.raises(UnsafePickleError, match=f"refused to load the global '{name[0]}.{name[1]}'"):
            safe_loads(_dict_pickle(_global(*name)), source="x")


@pytest.mark.parametrize("data, words", [
    (_tuple(_reconstructed(_tuple(_int(2)), _uint8_dtype(), b"ab")), "puts an array in a tuple"),       # SP19
    (_uint8_dtype(), "leaves a numpy class, dtype or function in the data itself"),                   # SP20
    (_reconstruct_as(_global("numpy", "ndarray"), _tuple(_int(0)), b"b"),
     "calls numpy's _reconstruct without giving the array its data"),                                   # SP22
])
def test_what_numpy_never_leaves_in_a_data_file_is_refused(data, words):
    # mutation pass 21: an array inside a tuple, a built dtype as a value and an array never given its
    # state came back as catapult's stand-ins (or None) under mutants no test killed
    with pytest.raises(UnsafePickleError, match=words):
        safe_loads(_dict_pickle(data), source="x")


@pytest.mark.parametrize("dtype, raw, words", [
    (_uint8_dtype(), _unicode("ab"), "gives an array data of type str; expected bytes"),           # SP25
    (_int(5), _bytes_op(b"ab"), "gives an array a dtype that is not a plain numpy.dtype"),       # SP26
])
def test_an_array_state_with_data_or_a_dtype_of_another_kind_is_refused_as_unsafe(dtype, raw, words):
    # mutation pass 21: without these checks NumPy's own TypeError / AttributeError read as a corrupt file
    head = _reconstruct_as(_global("numpy", "ndarray"), _tuple(_int(0)), b"b")
    payload = _dict_pickle(head + _tuple(_int(1), _tuple(_int(2)), dtype, pickle.NEWFALSE, raw) + pickle.BUILD)
    with pytest.raises(UnsafePickleError, match=words):
        safe_loads(payload, source="x")


@pytest.mark.parametrize("top", [_global("numpy", "dtype"), _uint8_dtype(), _global("_codecs", "encode")])
def test_a_stand_in_that_is_the_whole_pickle_is_refused(top):
    # mutation pass 21 (SP28): the stand-in check of the top-level object (not inside a container) was run by no test
    with pytest.raises(UnsafePickleError, match="in the data itself"):
        safe_loads(pickle.PROTO + b"\x02" + top + pickle.STOP, source="x")
