"""bench/study_supar_ablation.py's weight-norm ratios and its width read-out, against NumPy and
hand-made JSONs (the script's training runs are minutes; these check only what it computes), and
--from-json's tables on a JSON whose parts follow known power laws of density (slopes 0.5, 1, 0) and
whose per-seed ratios and losses have known means and sample standard deviations."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from bench_module import BENCH, bench_module

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


def _record(step, density, seed):
    init, update = 2.0 * density ** 0.5, 3.0 * density   # muP's laws: slopes 0.5 and 1
    # update / init per seed: dense 2 and 4 (mean 3, sample std sqrt 2), sparsest 1 and 1
    ratio = {1.0: [2.0, 4.0], 0.25: [1.0, 1.0]}[density][seed]
    return {"step": step, "init": init, "update": update, "out": 5.0, "update_over_init": ratio}


def test_from_json_reprints_slopes_seed_spreads_and_losses(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(BENCH))
    study = bench_module("study_supar_ablation")
    runs = [{"parametrization": "mup", "density": d, "seed": s, "val_loss": {0: 1.0, 1: 2.0}[s],
             "records": [_record(t, d, s) for t in (0, 5)]} for d in (1.0, 0.25) for s in (0, 1)]
    args = {"parametrizations": "mup", "densities": "1,0.25", "seeds": "0,1", "steps_at": "0,5",
            "lr": 0.001953125, "set": [], "out": None}
    path = tmp_path / "saved.json"
    path.write_text(json.dumps({"args": args, "wall_s": 1.0, "cpu_s": 1.0, "runs": runs, "slopes": []}))
    monkeypatch.setattr(sys, "argv", ["study_supar_ablation.py", "--from-json", str(path)])
    study.main()
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| mup |")]
    # one slope row per step (init +0.50, update +1.00, out +0.00), update / init as mean ± sample
    # std over the seeds at density 1 (2, 4: 3.00 ± 1.41) and at the sparsest (1, 1: 1.00 ± 0.00)
    assert rows[:2] == [f"| mup | {t} | +0.50 | +1.00 | +0.00 | 3.00 ± 1.41 | 1.00 ± 0.00 |" for t in (0, 5)]
    # the final losses per density, mean ± sample std over seeds (1, 2: 1.500 ± 0.707)
    assert rows[2] == "| mup | 1.500 ± 0.707 | 1.500 ± 0.707 |"
    assert len(rows) == 3
    # the rows it returns (saved as the JSON's "slopes"): the seed-mean ratios, dense and sparsest
    table = study.report(runs, ["mup"], [1.0, 0.25], [0, 5])
    assert [(r["step"], r["ratio_dense"], r["ratio_sparse"]) for r in table] == [(0, 3.0, 1.0), (5, 3.0, 1.0)]
    assert table[0]["ratio_dense_seeds"] == [2.0, 4.0] and table[0]["ratio_sparse_seeds"] == [1.0, 1.0]
