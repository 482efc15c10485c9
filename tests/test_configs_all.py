"""Every shipped config under configs/ validates: a sweep config expands into cells that each
validate (:func:`catapult.sweep.spec.expand`), a coord-check config loads, a run config loads."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from catapult import config as cfg
from catapult.engine.coord_check_study import load_coord_check
from catapult.sweep.spec import expand, load_sweep

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))


def test_there_are_configs_and_the_wrn_paper_configs_are_among_them():
    names = {p.name for p in CONFIGS}
    assert {"fig3_wrn_paper.yaml", "fig3_wrn_small.yaml", "table1_wrn_paper.yaml", "table1_wrn_small.yaml",
            "fig1_mup_paper.yaml", "fig1_sp_paper.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=[str(p.relative_to(ROOT / "configs")) for p in CONFIGS])
def test_config_validates(path):
    top = yaml.safe_load(path.read_text())
    data = top.get("data") or {}
    # a config for the user's own text files names no root: the user gives it (checked when read)
    overrides = ["data.root=user_text"] if data.get("name") == "text" and data.get("root") is None else []
    if "sweep" in top:
        base, spec = load_sweep(path, overrides)
        cells = expand(base, spec)
        assert cells and all(c.config["name"] for c in cells)
    elif "coord_check" in top:   # (configs/supar/coord_check_*.yaml) every model it builds, validated
        config, spec = load_coord_check(path, overrides)
        axes = [values for values in (spec["widths"], spec["densities"]) if values is not None]
        assert config["name"] and axes and all(len(values) >= 2 for values in axes) and spec["parametrizations"]
    else:
        assert cfg.load_config(path, overrides)["name"]


def test_the_wrn_paper_configs_say_what_the_paper_ran():
    base, spec = load_sweep(ROOT / "configs/warmup/fig3_wrn_paper.yaml")
    cells = expand(base, spec)
    c = cells[0].config
    assert (c["model"]["name"], c["model"]["depth"], c["model"]["widen"], c["model"]["init"]) == ("wrn", 16, 4,
                                                                                                  "trunc_normal")
    assert c["train"] == {**c["train"], "batch_size": 128, "steps": 100000}
    assert c["data"]["augment"]["flip"] and c["data"]["augment"]["crop"] == 4 and c["data"]["augment"]["mixup"] > 0
    assert c["schedule"]["decay"] == "cosine" and c["optimizer"]["name"] == "sgd"
    panels = {(x.config["model"]["parametrization"], x.config["loss"]) for x in cells}
    assert panels == {("sp", "mse"), ("sp", "cross_entropy"), ("mup", "mse"), ("mup", "cross_entropy")}
    adam = {x.config["optimizer"]["name"] for x in expand(*load_sweep(ROOT / "configs/adam/table1_wrn_paper.yaml"))}
    assert adam == {"adam", "gi-adam", "radam"}
    mup = cfg.load_config(ROOT / "configs/warmup/fig1_mup_paper.yaml")
    sp = cfg.load_config(ROOT / "configs/warmup/fig1_sp_paper.yaml")
    assert (mup["optimizer"]["lr"], sp["optimizer"]["lr"]) == (0.125, "32/lambda0")
    assert mup["data"]["n_train"] == sp["data"]["n_train"] == 5000 and mup["train"]["batch_size"] is None


_SUBCOMMANDS = "train|train-ddp|demo|critical-lr|spectrum|coord-check|sweep|export|plot|transfer|report"


def _header_commands(text: str) -> list[str]:
    """The ``catapult <command> ...`` lines of a config's comments (``\\``-continued lines joined,
    a trailing ``# remark`` and a closing backtick cut)."""
    found, pending = [], ""
    for line in text.splitlines():
        if not line.lstrip().startswith("#"):
            pending = ""
            continue
        body = (pending + " " + line.lstrip()[1:].strip()).strip()
        pending = ""
        if body.endswith("\\"):
            pending = body[:-1]
            continue
        match = re.search(rf"\bcatapult (?:{_SUBCOMMANDS}) .*", body)
        if match:
            found.append(re.split(r"\s#\s|`", match.group(0))[0].rstrip(" &"))
    return found


COMMANDS = [(path, command) for path in CONFIGS for command in _header_commands(path.read_text())]


def test_the_configs_say_how_to_run_them():
    assert len(COMMANDS) > 40 and {p.name for p, _ in COMMANDS} >= {"phase_diagram.yaml", "fig4_gpt_small_bpe.yaml"}


@pytest.mark.parametrize("path, command", COMMANDS, ids=[f"{p.name}: {c[:60]}" for p, c in COMMANDS])
def test_a_command_in_a_config_header_is_one_the_command_line_accepts(path, command, capsys):
    # `catapult export STORE --aggregate` (no --out, which export requires) was in two headers
    from catapult.cli import build_parser

    argv = shlex.split(command)[1:]
    try:
        _, extra = build_parser().parse_known_args(argv)
    except SystemExit:
        pytest.fail(f"{path.name}: `{command}` is refused: {capsys.readouterr().err.strip().splitlines()[-1]}")
    assert all("=" in token and not token.startswith("-") for token in extra), (command, extra)


def _cell_claims() -> list[tuple[Path, int, str]]:
    """``(config, cells, where)``: the cell counts that config headers (``... = 280 cells``) and
    the config READMEs' tables (last column ``280`` or ``280, ~30 min``) promise."""
    claims = []
    for path in CONFIGS:
        header = "\n".join(line for line in path.read_text().splitlines() if line.startswith("#"))
        match = re.search(r"(\d+) cells\b", header)
        if match:
            claims.append((path, int(match.group(1)), path.name))
    for readme in sorted((ROOT / "configs").rglob("README.md")):
        for row in readme.read_text().splitlines():
            cols = [c.strip() for c in row.strip().strip("|").split("|")]
            match = re.fullmatch(r"`([^`]+\.yaml)`", cols[0]) if len(cols) > 2 else None
            count = re.match(r"(\d+)(?:,|$)", cols[-1]) if match else None
            if count and (readme.parent / match.group(1)).is_file():
                claims.append(((readme.parent / match.group(1)).resolve(), int(count.group(1)),
                               f"{readme.relative_to(ROOT)}: {match.group(1)}"))
    return claims


CLAIMS = _cell_claims()


def test_the_cell_counts_are_checked():
    assert len(CLAIMS) >= 10 and any("README" in where for _, _, where in CLAIMS)


@pytest.mark.parametrize("path, cells, where", CLAIMS, ids=[w for _, _, w in CLAIMS])
def test_a_config_has_the_cells_its_documentation_says(path, cells, where):
    # lr_transfer_small.yaml said 280 cells and init_std_small.yaml 84 (the README 108): with their
    # 3 seeds `catapult sweep --dry-run` lists 840 and 324
    data = yaml.safe_load(path.read_text()).get("data") or {}
    overrides = ["data.root=user_text"] if data.get("name") == "text" and data.get("root") is None else []
    assert len(expand(*load_sweep(path, overrides))) == cells, where


def test_a_coord_check_config_trains_the_models_its_readme_says():
    # configs/supar/README.md said 90 models for coord_check_small.yaml: (4 widths + 5 densities)
    # x 3 parametrizations x 3 seeds is 81
    readme = ROOT / "configs/supar/README.md"
    rows = [[c.strip() for c in row.strip().strip("|").split("|")] for row in readme.read_text().splitlines()]
    claims = [(readme.parent / cols[0].strip("`"), int(m.group(1))) for cols in rows if len(cols) > 2
              for m in [re.match(r"(\d+) models\b", cols[-1])] if m]
    assert claims
    for path, models in claims:
        _, spec = load_coord_check(path)
        axes = len(spec["widths"] or []) + len(spec["densities"] or [])
        assert axes * len(spec["parametrizations"]) * len(spec["seeds"]) == models, path.name
