"""bench/study_supar_ablation.py's weight-norm ratios and its width read-out, against NumPy and
hand-made JSONs (the script's training runs are minutes; these check only what it computes)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bench_module import bench_module

abl = bench_module("study_supar_ablation")


def test_weight_ratios_match_numpy_norms():
    g = np.random.default_rng(0)
    w0 = g.normal(size=(12, 7)) * (g.random((12, 7)) < 0.4)
    w = w0 + g.normal(size=(12, 7)) * 0.1 * (w0 != 0)
    r = abl.weight_ratios(torch.tensor(w0, dtype=torch.float32), torch.tensor(w, dtype=torch.float32))
    d = w - w0
    assert r["frob"] == pytest.approx(np.linalg.norm(d) / np.linalg.norm(w0), rel=1e-5)
    assert r["spec"] == pytest.approx(np.linalg.svd(d, compute_uv=False)[0] / np.linalg.svd(w0, compute_uv=False)[0],
                                      rel=1e-5)
    assert r["stable_rank"] == pytest.approx(np.sum(np.linalg.svd(d, compute_uv=False) ** 2)
                                             / np.linalg.svd(d, compute_uv=False)[0] ** 2, rel=1e-5)


def test_weight_ratios_of_no_update():
    r = abl.weight_ratios(torch.eye(4), torch.eye(4))
    assert r["frob"] == 0.0 and r["spec"] == 0.0 and np.isnan(r["stable_rank"])


def test_fit_finite_width_recovers_the_model_and_a_pure_power_law_has_no_limit():
    widths = [64, 128, 256, 512]
    a, b = abl.fit_finite_width(widths, [np.sqrt(9.0 + 640.0 / w) for w in widths])
    assert (a, b) == (pytest.approx(9.0), pytest.approx(640.0))
    a, _ = abl.fit_finite_width(widths, [8.0 * w ** -0.5 for w in widths])
    assert abs(a) < 1e-12   # ratio ~ width^-1/2: ratio^2 = 64 / width, no width-invariant part


def test_slope_of_one_density_is_nan():
    assert np.isnan(abl.slope([0.5], [2.0]))
    assert abl.slope([1.0, 0.25], [1.0, 4.0]) == pytest.approx(-1.0)


def _run(p, density, seed, ratio, width=None):
    rec = {"step": 20, "update_over_init": ratio, "update_over_init_frob": ratio / 2, "update_over_init_spec": ratio}
    run = {"parametrization": p, "density": density, "seed": seed, "records": [rec]}
    if width is not None:
        run["width"] = width
    return run


def test_width_cells_one_dense_cell_width_from_the_runs_or_the_overrides(tmp_path, capsys):
    old = tmp_path / "w64.json"     # written before runs carried their width: 64 unless --set says
    old.write_text(json.dumps({"args": {"set": ["data.vocab_size=512"]}, "runs": [
        _run("supar_lr", 1.0, 0, 2.0), _run("supar_init", 1.0, 0, 2.0), _run("supar_lr", 0.015625, 0, 40.0)]}))
    new = tmp_path / "w256.json"
    new.write_text(json.dumps({"args": {"set": ["model.width=256"]}, "runs": [
        _run("supar_lr", 1.0, 0, 1.0, width=256), _run("supar_lr", 1.0, 1, 3.0, width=256),
        _run("supar_lr", 0.015625, 0, 20.0, width=256)]}))
    cells = abl.width_cells([str(old), str(new)], [20])
    assert cells[("dense", 20, "update_over_init")] == {64: [2.0], 256: [1.0, 3.0]}   # the seed-0 dense run once
    assert cells[("supar_lr 0.015625", 20, "update_over_init_frob")] == {64: [20.0], 256: [10.0]}
    rows = abl.width_report([str(old), str(new)], [20])
    sparse = next(r for r in rows if r["cell"] == "supar_lr 0.015625" and r["norm"] == "update_over_init")
    assert sparse["local_slopes"] == [pytest.approx(-0.5)]   # 40 -> 20 over 4x
    assert "supar_lr 0.015625" in capsys.readouterr().out


def test_matrix_cells_average_each_kind_over_the_blocks(tmp_path):
    rec = {"step": 5, "update_over_init": 1.0, "layers": {
        "blocks.0.attn.qkv": {"probe": 1.0, "frob": 0.5}, "blocks.1.attn.qkv": {"probe": 3.0, "frob": 1.5},
        "blocks.0.mlp.proj": {"probe": 4.0, "frob": 2.0}}}
    f = tmp_path / "w.json"
    f.write_text(json.dumps({"args": {"set": []}, "runs": [
        {"parametrization": "mup", "density": 0.5, "seed": 0, "width": 128, "records": [rec]}]}))
    cells = abl.matrix_cells([str(f)], [5])
    assert cells[("mup 0.5", 5, "attn.qkv", "probe")] == {128: [2.0]}
    assert cells[("mup 0.5", 5, "mlp.proj", "frob")] == {128: [2.0]}
