"""data.augment: flip, pad-and-crop and mixup against NumPy re-derivations, determinism per
(seed, step), the engine's batch stream, and the config rules (exit 2 with the key named)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from catapult import config as cfg
from catapult import engine as train
from catapult.cli import main
from catapult.data import Augment


def _numpy_augment(x: np.ndarray, y: np.ndarray, aug: Augment, step: int):
    """The module docstring's definition, written with NumPy loops (same draws, same order)."""
    rng = np.random.default_rng([aug.seed, step])
    n, c, h, w = x.shape
    flips = rng.random(n) < 0.5
    offsets = rng.integers(0, 2 * aug.crop + 1, size=(2, n))
    partner = rng.permutation(n)
    lam = rng.beta(aug.mixup, aug.mixup, size=n) if aug.mixup > 0 else None
    out = x.copy()
    for i in range(n):
        img = out[i][:, :, ::-1] if (aug.flip and flips[i]) else out[i]
        if aug.crop:
            p = aug.crop
            padded = np.zeros((c, h + 2 * p, w + 2 * p), x.dtype)
            padded[:, p:p + h, p:p + w] = img
            img = padded[:, offsets[0, i]:offsets[0, i] + h, offsets[1, i]:offsets[1, i] + w]
        out[i] = img
    if lam is None:
        return out, y
    onehot = np.eye(aug.num_classes)[y]
    mixed = np.stack([lam[i] * out[i] + (1 - lam[i]) * out[partner[i]] for i in range(n)])
    targets = np.stack([lam[i] * onehot[i] + (1 - lam[i]) * onehot[partner[i]] for i in range(n)])
    return mixed, targets


@pytest.mark.parametrize("flip, crop, mixup", [(True, 0, 0.0), (False, 2, 0.0), (True, 1, 0.7), (False, 0, 1.0)])
def test_augment_equals_the_numpy_definition(flip, crop, mixup):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(9, 2, 5, 6, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 4, (9,), generator=gen)
    aug = Augment(flip=flip, crop=crop, mixup=mixup, num_classes=4, seed=11)
    xa, ya = aug(x, y, step=5)
    xn, yn = _numpy_augment(x.numpy(), y.numpy(), aug, 5)
    np.testing.assert_allclose(xa.numpy(), xn, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ya.numpy(), yn, rtol=1e-12, atol=1e-12)


def test_each_sample_is_augmented_independently_and_deterministically():
    x = torch.arange(64.0).reshape(1, 1, 8, 8).repeat(400, 1, 1, 1)
    y = torch.zeros(400, dtype=torch.long)
    aug = Augment(flip=True, crop=1, seed=3)
    a, _ = aug(x, y, step=0)
    assert torch.equal(a, aug(x, y, step=0)[0])
    assert not torch.equal(a, aug(x, y, step=1)[0])
    assert not torch.equal(a, Augment(flip=True, crop=1, seed=4)(x, y, step=0)[0])
    distinct = {tuple(img.flatten().tolist()) for img in a}
    assert len(distinct) == 18                 # 2 flips x 3 x 3 offsets, all reached


def test_the_run_batch_stream_augments_minibatches_from_the_data_seed():
    config = cfg.validate({"data": {"name": "digits", "n_train": 40, "augment": {"flip": True, "crop": 1}},
                           "model": {"width": 8, "depth": 2}, "train": {"batch_size": 10, "steps": 3}})
    data = train.load_data(config)
    stream = train.batch_stream(config, data)
    plain = train.BatchStream(data.x_train, data.y_train, 10, train.seeds(config["seed"])[1])
    aug = Augment(flip=True, crop=1, num_classes=data.num_classes, seed=train.seeds(config["seed"])[1])
    for t in range(5):
        x, y = plain.batch(t)
        xa, ya = stream.batch(t)
        assert torch.equal(xa, aug(x, y, step=t)[0]) and torch.equal(ya, y)


@pytest.mark.parametrize("override, key", [
    (["train.batch_size=null", "data.augment.flip=true"], "data.augment"),
    (["data.augment.crop=9"], "data.augment.crop"),
    (["data.augment.crop=8"], "data.augment.crop"),  # shifts by the whole side: blank images, labels kept
    (["data.augment.mixup=-1"], "data.augment.mixup"),
])
def test_bad_augment_settings_exit_2_naming_the_key(tmp_path, capsys, override, key):
    path = tmp_path / "c.yaml"
    path.write_text("data: {name: digits, n_train: 32, n_test: 16}\nmodel: {width: 8, depth: 2}\n"
                    "train: {steps: 1, batch_size: 8}\neval: {sharpness_every: 0}\n")
    assert main(["train", str(path), *override, "--out", str(tmp_path / "run"), "--progress", "none"]) == 2
    assert key in capsys.readouterr().err


def test_a_crop_of_the_whole_digit_side_is_reported_with_the_other_problems_before_any_work(tmp_path, capsys):
    # train.steps 1 with a cosine decay: only the decay was reported; the crop came after the data was loaded
    path = tmp_path / "c.yaml"
    path.write_text("data: {name: digits, n_train: 32, n_test: 16, augment: {crop: 8}}\nmodel: {width: 8, depth: 2}\n"
                    "train: {steps: 1, batch_size: 8}\nschedule: {decay: cosine}\neval: {sharpness_every: 0}\n")
    assert main(["train", str(path), "--out", str(tmp_path / "run"), "--progress", "none"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "catapult train: error: 2 problems in the config:", lines
    assert lines[1].startswith("  schedule.decay: cosine decay needs train.steps (1) > schedule.warmup_steps (1)")
    assert lines[2].startswith("  data.augment.crop: 8 is not below the 8x8 image side of data.name digits")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name, side", [("digits", 8), ("cifar10", 32), ("cifar100", 32)])
def test_the_config_knows_each_image_side_before_the_data_is_loaded(name, side):
    config = {"data": {"name": name, "root": "somewhere" if name != "digits" else None},
              "train": {"batch_size": 8}}
    for crop in (side, side + 1):            # refused: the largest shifts leave no pixel
        config["data"]["augment"] = {"crop": crop}
        with pytest.raises(cfg.ConfigError, match=rf"data.augment.crop: {crop} is not below the {side}x{side}"):
            cfg.validate(config)
    config["data"]["augment"] = {"crop": side - 1}  # the largest crop below the side: kept as written
    assert cfg.validate(config)["data"]["augment"]["crop"] == side - 1
    if name == "digits":   # the side the loader gives (CIFAR's is its format's: 3072 = 3 x 32 x 32 per row)
        assert tuple(train.load_data(cfg.validate({"data": {"name": name, "n_train": 4, "n_test": 4}})
                                     ).x_train.shape[2:]) == (side, side)


@pytest.mark.parametrize("kwargs, words", [
    (dict(mixup=float("inf"), num_classes=4), "augment mixup must be a finite number >= 0; got inf"),  # all-nan soft targets
    (dict(mixup="0.5", num_classes=4), "augment mixup must be a finite number"),  # "'>=' not supported"
    (dict(crop=float("inf")), r"augment crop must be an integer >= 0; got inf"),  # OverflowError
    (dict(crop=True), "augment crop must be an integer"),
    (dict(mixup=0.5, num_classes=2.5), "augment num_classes must be an integer >= 1; got 2.5"),
    (dict(flip=True, seed=-1), "augment seed must be an integer >= 0; got -1"),  # NumPy's words at the first batch
    (dict(flip=True, seed="a"), "augment seed must be an integer >= 0; got 'a'"),
])
def test_bad_settings_are_named_when_built(kwargs, words):
    with pytest.raises(ValueError, match=words):
        Augment(**kwargs)


def test_mixup_of_integer_images_is_refused_not_unmixed():
    # uint8 images: lam was cast to uint8 (0 or 1), so each image came back whole, its own or its partner's
    x = torch.arange(4 * 64, dtype=torch.uint8).reshape(4, 1, 8, 8)
    with pytest.raises(TypeError, match=r"mixup needs floating-point images; got torch.uint8 of shape \(4, 1, 8, 8\)"):
        Augment(mixup=1.0, num_classes=4, seed=0)(x, torch.arange(4), step=0)
    assert Augment(flip=True, crop=1)(x, torch.arange(4), step=0)[0].dtype == torch.uint8  # flip, crop: any dtype


def test_a_crop_of_the_whole_side_is_refused_one_less_keeps_a_pixel():
    # crop = 8 on 8x8 images passed the check, and a quarter of the shifted images were all zeros
    x, y = torch.ones(200, 1, 8, 8), torch.zeros(200, dtype=torch.long)
    with pytest.raises(ValueError, match=r"crop 8 is not below the 8x8 image side"):
        Augment(crop=8).check_images(tuple(x.shape))
    out, _ = Augment(crop=7, seed=0)(x, y, step=0)
    assert bool((out.flatten(1).sum(1) > 0).all())  # every image keeps at least one of its pixels


def test_mixup_of_soft_float64_targets_mixes_them_as_given():
    # targets already soft (float, (N, K)): mixed as they are, in their own dtype, not re-one-hot
    # or cast to float32 (a float32 cast lost 1e-8 of each weight)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(5, 1, 4, 4, generator=gen, dtype=torch.float64)
    t = torch.softmax(torch.randn(5, 3, generator=gen, dtype=torch.float64), dim=1)
    aug = Augment(mixup=0.5, num_classes=3, seed=2)
    _, tm = aug(x, t, step=7)
    rng = np.random.default_rng([2, 7])
    rng.random(5), rng.integers(0, 1, size=(2, 5))  # the flip and offset draws come first
    partner = rng.permutation(5)
    lam = rng.beta(0.5, 0.5, size=5)
    expected = lam[:, None] * t.numpy() + (1 - lam[:, None]) * t.numpy()[partner]
    assert tm.dtype == torch.float64
    np.testing.assert_allclose(tm.numpy(), expected, rtol=1e-15, atol=1e-15)
    np.testing.assert_allclose(tm.sum(1).numpy(), np.ones(5), rtol=1e-14)


def test_pad_crop_images_refuses_offsets_outside_0_to_2pad():
    """rows=-1 read the padded image from its far end (the last padding row landed on top of the
    image, silently); offsets past 2 pad, a negative pad and one offset per image are checked too."""
    from catapult.data.augment import pad_crop_images
    x = torch.arange(1.0, 10.0).reshape(1, 1, 3, 3)
    good = pad_crop_images(x, 1, torch.tensor([2]), torch.tensor([1]))   # shift up by one
    assert good.flatten().tolist() == [4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 0.0, 0.0, 0.0]
    for rows, cols, label in ((-1, 1, "rows"), (1, -2, "cols"), (3, 1, "rows")):
        with pytest.raises(ValueError, match=rf"{label} must lie in 0\.\.2"):
            pad_crop_images(x, 1, torch.tensor([rows]), torch.tensor([cols]))
    with pytest.raises(ValueError, match="^pad_crop_images pad must be an integer >= 0; got -1$"):
        pad_crop_images(x, -1, torch.tensor([0]), torch.tensor([0]))
    with pytest.raises(ValueError, match=r"rows must be an integer tensor of shape \(1,\)"):
        pad_crop_images(x, 1, torch.tensor([1, 1]), torch.tensor([1]))
    with pytest.raises(ValueError, match="cols must be an integer tensor"):
        pad_crop_images(x, 1, torch.tensor([1]), torch.tensor([1.0]))


def test_mixup_batch_checks_lam_targets_and_partner():
    """A float lam raised AttributeError; integer targets cast lam to 0 (every sample took its
    partner's label, silently); lam = 1.5 or NaN extrapolated past both samples."""
    from catapult.data.augment import mixup_batch
    x, t, partner = torch.tensor([[0.0], [4.0]]), torch.eye(2), torch.tensor([1, 0])
    xm, tm = mixup_batch(x, t, partner, 0.75)                      # one weight for the batch
    assert xm.flatten().tolist() == [1.0, 3.0] and tm.tolist() == [[0.75, 0.25], [0.25, 0.75]]
    assert mixup_batch(x, t, partner, torch.tensor(0.25))[0].flatten().tolist() == [3.0, 1.0]
    for lam in (1.5, float("nan"), -0.1, "0.5", torch.tensor([0.5, 1.5]), torch.tensor([0.5, float("nan")])):
        with pytest.raises(ValueError, match="lam must"):
            mixup_batch(x, t, partner, lam)
    with pytest.raises(ValueError, match=r"lam must be .* shape \(2,\)"):
        mixup_batch(x, t, partner, torch.tensor([0.2, 0.3, 0.4]))
    with pytest.raises(TypeError, match="targets must be floating-point soft targets"):
        mixup_batch(x, torch.eye(2, dtype=torch.long), partner, torch.tensor([0.75, 0.75]))
    with pytest.raises(TypeError, match="partner must be an integer tensor"):
        mixup_batch(x, t, torch.tensor([1.0, 0.0]), 0.5)


def test_flip_images_checks_shapes():
    """flip of shape (1,) was broadcast (every image mirrored) and a 3-d x came back 4-d, silently."""
    from catapult.data.augment import flip_images
    x = torch.arange(4.0).reshape(2, 1, 1, 2)
    assert flip_images(x, torch.tensor([False, True])).flatten().tolist() == [0.0, 1.0, 3.0, 2.0]
    with pytest.raises(ValueError, match=r"flip must be a bool tensor of shape \(2,\)"):
        flip_images(x, torch.tensor([True]))
    with pytest.raises(ValueError, match="flip must be a bool tensor"):
        flip_images(x, torch.tensor([1, 0]))
    with pytest.raises(ValueError, match=r"x must be images \(N, C, H, W\)"):
        flip_images(x.reshape(2, 1, 2), torch.tensor([True, False]))


def test_mixup_names_labels_out_of_range():
    """A label >= num_classes raised torch's "Class values must be smaller than num_classes.",
    naming neither the label nor augment."""
    aug = Augment(mixup=0.4, num_classes=3, seed=0)
    with pytest.raises(ValueError, match="augment mixup: label 5 is out of range for 3 classes"):
        aug(torch.randn(4, 1, 4, 4), torch.tensor([0, 1, 2, 5]), step=0)


def test_mixup_batch_refuses_a_negative_entry_of_a_lam_tensor():
    # (mutation pass 23) the tensor path's range check has two ends: lam = -0.1 extrapolates past
    # the sample away from its partner, as 1.1 does toward it
    from catapult.data.augment import mixup_batch
    x, t, partner = torch.tensor([[0.0], [4.0]]), torch.eye(2), torch.tensor([1, 0])
    with pytest.raises(ValueError, match=r"lam must lie in \[0, 1\]; got values from -0\.1"):
        mixup_batch(x, t, partner, torch.tensor([0.5, -0.1]))


def test_augment_refuses_a_negative_crop_and_a_crop_as_wide_as_the_narrower_side():
    # (mutation pass 23) crop -1 named (not a shift of -1..-2 pixels), and on 8x4 images the side
    # that bounds the crop is the width: crop 4 leaves no pixel at the largest column shifts
    from catapult.data.augment import Augment
    with pytest.raises(ValueError, match=r"augment crop must be an integer >= 0; got -1"):
        Augment(crop=-1)
    Augment(crop=3).check_images((2, 1, 8, 4))
    with pytest.raises(ValueError, match=r"augment crop 4 is not below the 8x4 image side"):
        Augment(crop=4).check_images((2, 1, 8, 4))
