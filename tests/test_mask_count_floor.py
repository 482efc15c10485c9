"""An exact-density mask keeps ``round(density * numel)`` weights; where that rounds to 0 it kept 1
(``exact_nonzeros``' floor), so the matrix was ``1 / numel`` dense, not ``density``: MLP(width 16,
density 0.001) trained at density 0.0039 (3.9x), recorded as 0.001, with SμPar's init and lr factors
``1 / m_rho`` taken from 0.001, without a word (S). Now refused: ``random_mask`` and the models with a
ValueError naming the shape, ``parametrize`` before any layer changes, and the CLI with exit code 2
naming ``model.density`` before any work. The truth: the mask's ``True`` count, counted."""
from __future__ import annotations

import pytest
import torch
import yaml

from catapult.cli import main
from catapult.models import GPT, MLP
from catapult.parametrize import parametrize
from catapult.sparsity import MaskedLinear, MaskUpdater, random_mask, sparsify_


@pytest.mark.parametrize("shape, density", [((16, 16), 0.001), ((8, 8), 0.0078), ((3, 5), 0.03)])
def test_a_density_whose_count_rounds_to_zero_is_refused_not_floored_to_one(shape, density):
    numel = shape[0] * shape[1]
    assert density * numel < 0.5
    with pytest.raises(ValueError, match=r"^random_mask: density .* keeps round\(.*\) = 0 of the "
                                         rf"{numel} entries of a \({shape[0]}, {shape[1]}\) mask"):
        random_mask(shape, density, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="keeps round"):
        MaskedLinear(shape[1], shape[0], density=density)
    # half a weight or more keeps its count, rounded half up, as before
    just = 0.5 / numel
    mask = random_mask(shape, just, generator=torch.Generator().manual_seed(0))
    assert int(mask.sum()) == 1
    mask = random_mask(shape, 2.4 / numel, generator=torch.Generator().manual_seed(0))
    assert int(mask.sum()) == 2


def test_the_models_refuse_it_naming_the_matrix():
    with pytest.raises(ValueError, match=r"\(16, 16\) mask"):
        MLP(4, 2, 16, 3, parametrization="supar", density=0.001)
    with pytest.raises(ValueError, match=r"\(8, 8\) mask"):      # one of Q, K, V (each its own count)
        GPT(50, 8, 1, 2, 8, parametrization="supar", density=0.005)


def test_bernoulli_masks_are_refused_at_the_same_count():
    """A Bernoulli mask at a density whose count rounds to 0 kept no weight at all (MLP width 4, density 1e-30:
    a 4x4 hidden layer of zeros under SμPar's lr_mult 1e30; a GPT's Q, K, V, projections and MLP likewise), built
    by random_mask, MaskedLinear, the MLP and the GPT without a word, where the config, parametrize() and the exact
    masks refuse that count. Truth: the count of True entries of what was built (0 before), and the refusal."""
    with pytest.raises(ValueError, match=r"^random_mask: density 0.01 keeps round\(0.01 \* 16\) = 0 of the 16 entries "
                                         r"of a \(4, 4\) mask \(a Bernoulli mask would keep none with probability 0.851\)"):
        random_mask((4, 4), 0.01, method="bernoulli", generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"\(4, 4\) mask \(a Bernoulli"):
        MLP(3, 2, width=4, depth=3, parametrization="supar", density=1e-30, mask_method="bernoulli", mask_seed=0)
    with pytest.raises(ValueError, match=r"\(4, 4\) mask \(a Bernoulli"):   # one of Q, K, V
        GPT(5, 4, 1, 1, 2, parametrization="supar", density=1e-30, mask_method="bernoulli", mask_seed=0)
    with pytest.raises(ValueError, match=r"\(4, 4\) mask \(a Bernoulli"):
        MaskedLinear(4, 4, density=0.01, mask_method="bernoulli")
    # half an expected weight or more is drawn, as before: i.i.d. entries, any count
    model = MLP(3, 2, width=4, depth=3, density=0.5 / 16, mask_method="bernoulli", mask_seed=0)
    assert model.layers[1].mask.shape == (4, 4) and model.layers[1].mask.dtype == torch.bool


def test_parametrize_refuses_it_before_any_layer_changes():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 8),
                                torch.nn.ReLU(), torch.nn.Linear(8, 1))
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=r"^parametrize\(\): density=0.001 keeps round\(0.001 \* 64\) = 0 "
                                         r"weights of hidden layer '2' \(\(8, 8\)\)"):
        parametrize(model, "supar", density=0.001, base_width=4)
    assert [type(m) for m in model] == [torch.nn.Linear, torch.nn.ReLU, torch.nn.Linear, torch.nn.ReLU,
                                        torch.nn.Linear]
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def _config(tmp_path, command):
    config = dict(name="tiny", seed=0, data=dict(name="digits", n_train=32, n_test=16),
                  model=dict(name="mlp", width=16, depth=3, parametrization="supar"),
                  loss="cross_entropy", optimizer=dict(name="adam", lr=0.01),
                  train=dict(steps=1, batch_size=16), eval=dict(sharpness_every=0))
    if command == "coord-check":
        config["coord_check"] = dict(densities=[1.0, 0.001], seeds=[0], steps=1)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize("command", ["train", "coord-check"])
def test_the_cli_refuses_it_with_exit_2_naming_model_density(tmp_path, capsys, command):
    out = tmp_path / "out"
    overrides = ["model.density=0.001"] if command == "train" else []
    code = main([command, str(_config(tmp_path, command)), "--out", str(out), *overrides])
    err = capsys.readouterr().err
    assert code == 2 and "model.density" in err and "16x16" in err and "0.001" in err, err
    assert "Traceback" not in err and not out.exists()


def test_gmp_refuses_a_final_density_that_keeps_no_weight_of_a_matrix():
    # prune_to kept exact_nonzeros' floor of 1: the 16x16 layer ended at density 1/256, not 0.001
    model = torch.nn.Sequential(torch.nn.Linear(4, 16), sparsify_(torch.nn.Linear(16, 16), 1.0), torch.nn.Linear(16, 2))
    with pytest.raises(ValueError, match=r"^gmp final_density 0.001 keeps round\(0.001 \* 256\) = 0 weights of '1' "
                                         r"\(\(16, 16\)\)"):
        MaskUpdater(model, "gmp", final_density=0.001, update_every=1, end_step=4)
    updater = MaskUpdater(model, "gmp", final_density=0.5 / 256, update_every=1, end_step=4)
    for t in range(1, 5):
        updater.step(t)
    assert int(model[1].mask.sum()) == 1      # half a weight rounds up to one, as documented


def test_no_entry_is_the_rounded_count_exact_nonzeros_floors_and_never_density_1():
    """Mutation pass 20 (KE1, KE2): keeps_no_entry is True exactly where exact_nonzeros' rounded count
    floor(density * numel + 0.5) is 0 (its floor of 1 then keeps an entry the density does not): 0.49999999999999994
    of one entry rounds to 1 in float64 (0.49999999999999994 + 0.5 == 1.0), a kept entry, not refused (KE2's
    density * numel < 0.5 refused it); density 1 keeps every entry, an empty matrix's too (KE1 refused a 0-entry
    hidden layer at density 1). Truth: NumPy's float64 of the same rounding."""
    import numpy as np
    import torch.nn as nn

    from catapult.parametrize_checks import check_masks
    from catapult.sparsity.static import exact_nonzeros, keeps_no_entry

    tie = 0.49999999999999994
    assert tie < 0.5 and np.floor(np.float64(tie) + 0.5) == 1.0
    assert not keeps_no_entry(1, tie) and exact_nonzeros(1, tie) == 1
    for numel in (1, 3, 256, 4096):
        for density in (tie / numel, 0.4 / numel, 0.5 / numel, 0.6 / numel, 1.0 / numel, 0.25, 1.0):
            rounded = int(np.floor(np.float64(density) * numel + 0.5))
            assert keeps_no_entry(numel, density) == (density < 1.0 and rounded == 0), (numel, density)
    assert not keeps_no_entry(0, 1.0)
    assert check_masks({"h": nn.Linear(0, 4)}, {"h": "hidden"}, 1.0) is None


def test_gmp_counts_the_floor_per_part_of_a_fused_matrix_and_for_a_one_weight_layer():
    """Mutation pass 20 (KE8, KE10): a fused matrix (catapult_mask_parts = 3: Q, K and V masked apart) keeps
    round(d * numel / 3) weights a part, so final_density 0.05 of a 6x4 weight (1.2 weights of 24, but 0.4 of each
    part of 8) is refused naming its 3 parts (KE8 counted the whole matrix); a 1x1 layer at 0.3 keeps no weight
    (KE10 exempted one-weight parts). final_density 0.07 (0.56 of a part) is taken."""
    fused = sparsify_(torch.nn.Linear(4, 6), 1.0)
    fused.catapult_mask_parts = 3
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), fused, torch.nn.Linear(6, 2))
    with pytest.raises(ValueError, match=r"^gmp final_density 0.05 keeps round\(0.05 \* 8\) = 0 weights of '1' "
                                         r"\(\(6, 4\), each of 3 parts\)"):
        MaskUpdater(model, "gmp", final_density=0.05, update_every=1, end_step=4)
    assert MaskUpdater(model, "gmp", final_density=0.07, update_every=1, end_step=4).layers
    tiny = torch.nn.Sequential(torch.nn.Linear(3, 1), sparsify_(torch.nn.Linear(1, 1), 1.0), torch.nn.Linear(1, 2))
    with pytest.raises(ValueError, match=r"^gmp final_density 0.3 keeps round\(0.3 \* 1\) = 0 weights of '1' "):
        MaskUpdater(tiny, "gmp", final_density=0.3, update_every=1, end_step=4)
