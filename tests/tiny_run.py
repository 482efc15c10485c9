"""The smallest run config the CLI tests train: an 8-wide MLP on 32 digits for 2 steps; and the
smallest sweep of it the store tests run (two one-step cells)."""


def tiny_config(name: str) -> str:
    """A YAML run config named ``name`` that trains in well under a second."""
    return (f"name: {name}\n"
            "data: {name: digits, n_train: 32, n_test: 16}\n"
            "model: {width: 8, depth: 2}\n"
            "train: {steps: 2}\n"
            "eval: {sharpness_every: 0, test_every: 0}\n")


def two_cell_grid(name: str = "full") -> str:
    """A YAML sweep config named ``name``: two one-step cells (lr 0.1, 0.2) of an 8-wide MLP on 32 digits."""
    return (f"name: {name}\n"
            "data: {name: digits, n_train: 32, n_test: 16}\n"
            "model: {name: mlp, width: 8, depth: 2}\n"
            "train: {steps: 1}\n"
            "eval: {sharpness_every: 0}\n"
            "sweep: {grid: {optimizer.lr: [0.1, 0.2]}}\n")


def gpt_shards_config(root, **data) -> dict:
    """A one-step float64 GPT (width 16, one block) on the token shards at ``root``, context 8,
    with ``data`` keys added: the shards tests' run."""
    return dict(seed=0, dtype="float64", data=dict(name="text", root=str(root), context=8, **data),
                model=dict(name="gpt", width=16, depth=1, n_heads=2), loss="cross_entropy",
                optimizer=dict(name="adam", lr=1e-3), train=dict(steps=1, batch_size=4),
                eval=dict(sharpness_every=0))


def tiny_demo_configs() -> list:
    """The demo's one muP run of width multiplier 1, made tiny (an 8-wide MLP on 64 digits, one step,
    nothing measured) and validated: the demo-failure tests' run."""
    from catapult import config as cfg
    from catapult import demo

    config = demo.demo_configs(("mup",), (1,))[0]
    config["data"].update(n_train=64, n_test=32)
    config["model"]["width"] = 8
    config["train"]["steps"] = 1
    config["eval"].update(sharpness_every=0, test_every=0)
    return [cfg.validate(config)]
