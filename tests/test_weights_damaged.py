"""A ``model.pt`` damaged inside a tensor's bytes (one flipped bit on a disk or in a copy) kept its
zip structure, and ``torch.load`` does not check the CRC-32 each entry records: ``catapult spectrum
--weights`` loaded the changed weight and measured it, exit 0, without a word. The load now reads
each entry against its recorded CRC-32 and refuses a mismatch naming ``--weights``, the file and the
entry (exit 2); an intact file, and one saved with torch's checksums turned off (CRC 0), load."""
from __future__ import annotations

import struct
import zipfile

import pytest
import torch
import yaml

from catapult import cli
from catapult.config import ConfigError
from catapult.engine.build import build_run
from catapult.engine.spectrum_study import load_weights

CONFIG = dict(name="tiny_damaged", seed=0, data=dict(name="digits", n_train=32, n_test=8),
              model=dict(name="mlp", width=3, depth=2), loss="mse", optimizer=dict(name="sgd", lr=0.1),
              train=dict(steps=1), eval=dict(sharpness_every=0))


def _first_data_entry(path):
    """(entry name, offset of its first byte in the file) of the first tensor's storage."""
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith("/data/0"))
    raw = path.read_bytes()
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26:info.header_offset + 30])
    return info.filename, info.header_offset + 30 + name_len + extra_len


def test_a_flipped_bit_is_refused_naming_the_entry_and_intact_files_load(tmp_path, capsys):
    state = build_run(CONFIG).model.state_dict()
    path = tmp_path / "model.pt"
    torch.save(state, path)
    model = build_run(CONFIG).model
    load_weights(model, path)                 # intact: loaded
    assert all(torch.equal(model.state_dict()[name], tensor) for name, tensor in state.items())

    entry, offset = _first_data_entry(path)
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x01                       # the lowest mantissa bit of the first float32
    path.write_bytes(bytes(raw))
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    changed = [name for name in state if not torch.equal(loaded[name], state[name])]
    assert len(changed) == 1 and bool(torch.isfinite(loaded[changed[0]]).all())   # a finite, silent change
    with pytest.raises(ConfigError, match=rf"--weights: .*model\.pt is damaged: its entry {entry} does not match"):
        load_weights(build_run(CONFIG).model, path, key="--weights")
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    argv = ["spectrum", str(config), "--weights", str(path), "--top-k", "1", "--trace-matvecs", "0",
            "--density-runs", "0"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert f"its entry {entry} does not match the CRC-32" in err and "Traceback" not in err

    # torch >= 2.6 can be told not to compute the checksums (it records 0): such a file loads
    settings = getattr(getattr(getattr(torch.utils, "serialization", None), "config", None), "save", None)
    if settings is not None and hasattr(settings, "compute_crc32"):
        unchecked, before = tmp_path / "unchecked.pt", settings.compute_crc32
        settings.compute_crc32 = False    # (monkeypatch's undo fails on torch's config module)
        try:
            torch.save(state, unchecked)
        finally:
            settings.compute_crc32 = before
        with zipfile.ZipFile(unchecked) as archive:
            assert {info.CRC for info in archive.infolist()} == {0}
        model = build_run(CONFIG).model
        load_weights(model, unchecked)
        assert all(torch.equal(model.state_dict()[name], tensor) for name, tensor in state.items())
