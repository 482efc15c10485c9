"""The smallest run config the CLI tests train: an 8-wide MLP on 32 digits for 2 steps."""


def tiny_config(name: str) -> str:
    """A YAML run config named ``name`` that trains in well under a second."""
    return (f"name: {name}\n"
            "data: {name: digits, n_train: 32, n_test: 16}\n"
            "model: {width: 8, depth: 2}\n"
            "train: {steps: 2}\n"
            "eval: {sharpness_every: 0, test_every: 0}\n")
