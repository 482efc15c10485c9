"""bench/RESULTS.md, read as a reader who reruns it would: every `catapult sweep|train|coord-check`
command it records validates with its overrides, a study whose heading gives its cell count
expands to that count, and commands recorded under older defaults restore those defaults (the
recorded lambda_0 and divergence step come back)."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = (ROOT / "bench" / "RESULTS.md").read_text()
OVERRIDE = re.compile(r"[a-z_][\w.]*=.+")
SUBCOMMANDS = ("sweep", "train", "coord-check")


def sections(text: str) -> list[tuple[str, str]]:
    """(heading, body) for every markdown heading."""
    parts = re.split(r"^(#+ .*)$", text, flags=re.M)
    return [(parts[i], parts[i + 1]) for i in range(1, len(parts) - 1, 2)]


def commands(body: str) -> list[tuple[str, str, list[str]]]:
    """(subcommand, config, overrides) of each catapult command in the body's indented blocks;
    continuation lines joined, `NAME='value'` shell variables of the body substituted."""
    lines, joined = body.splitlines(), []
    for line in lines:
        if joined and joined[-1].endswith("\\"):
            joined[-1] = joined[-1][:-1] + " " + line.strip()
        elif line.startswith("    "):
            joined.append(line.strip())
    # quoted (A='a b') or bare (S=configs/x.yaml): a bare one left "$S" in place of the config,
    # and the command went unchecked
    variables = {name: quoted or bare for name, quoted, bare in
                 re.findall(r"\b([A-Z])=(?:'([^']*)'|([^\s';]+))", body)}
    out = []
    for line in joined:
        for name, value in variables.items():
            line = line.replace("$" + name, value)
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError:
            continue
        for i, tok in enumerate(tokens[:-2]):
            if tok.endswith("catapult") and tokens[i + 1] in SUBCOMMANDS and tokens[i + 2].startswith("configs/"):
                rest = tokens[i + 3:]
                rest = rest[:rest.index("&")] if "&" in rest else rest
                out.append((tokens[i + 1], tokens[i + 2], [t for t in rest if OVERRIDE.fullmatch(t)]))
    return out


ALL = [(heading, *cmd) for heading, body in sections(RESULTS) for cmd in commands(body)]


def test_results_records_catapult_commands():
    assert len(ALL) >= 30, len(ALL)
    assert {sub for _, sub, _, _ in ALL} >= {"sweep", "coord-check"}


@pytest.mark.parametrize("heading,sub,path,overrides", ALL,
                         ids=[f"{i}-{sub}-{Path(p).stem}" for i, (_, sub, p, _) in enumerate(ALL)])
def test_recorded_command_validates(heading, sub, path, overrides):
    from catapult.config import load_config
    from catapult.engine.coord_check_study import load_coord_check
    from catapult.sweep.spec import expand, load_sweep

    assert (ROOT / path).is_file(), path
    if sub == "sweep":
        assert expand(*load_sweep(ROOT / path, overrides))
    elif sub == "coord-check":
        load_coord_check(ROOT / path, overrides)
    else:
        load_config(ROOT / path, overrides)


COUNTED = [(heading, path, int(n)) for heading, _ in sections(RESULTS)
           for path, n in re.findall(r"(configs/[\w/.-]+\.yaml), (\d+) (?:cells|runs)", heading)]


def test_headings_with_cell_counts_are_found():
    assert len(COUNTED) >= 6, COUNTED


@pytest.mark.parametrize("heading,path,n", COUNTED, ids=[f"{Path(p).stem}-{n}" for _, p, n in COUNTED])
def test_recorded_sweep_expands_to_the_cells_its_heading_counts(heading, path, n):
    from catapult.sweep.spec import expand, load_sweep

    body = dict(sections(RESULTS))[heading]
    first = next(ov for sub, p, ov in commands(body) if sub == "sweep" and p == path)
    assert len(expand(*load_sweep(ROOT / path, first))) == n


def test_phase_small_command_measures_the_recorded_lambda0():
    # The issue-4 table lists lambda_0 per panel; the recorded command must measure the same value
    # (the default lambda_0 rule changed after the run: mean over 10 batches instead of batch 0).
    from catapult.sweep.lambda0 import measure_lambda0
    from catapult.sweep.spec import expand, load_sweep

    heading = next(h for h, _ in sections(RESULTS) if h.startswith("## Phase diagram, small scale"))
    body = dict(sections(RESULTS))[heading]
    overrides = next(ov for sub, p, ov in commands(body) if p == "configs/sweeps/phase_small.yaml")
    recorded = float(re.search(r"^\| sp \| mse \| ([0-9.]+) \|", body, flags=re.M).group(1))
    cell = expand(*load_sweep(ROOT / "configs/sweeps/phase_small.yaml", overrides))[0]
    assert (cell.config["model"]["parametrization"], cell.config["loss"]) == ("sp", "mse")
    assert measure_lambda0(cell.config) == pytest.approx(recorded, rel=1e-3)


def test_fig5_check_command_diverges_at_the_recorded_step():
    # "(checked: `catapult train ... optimizer.lr=2^4/lambda0` diverges at step 4; 2^5 at step 2"
    import torch

    from catapult.config import load_config
    from catapult.engine import run

    text = re.sub(r"\s+", " ", RESULTS)
    m = re.search(r"`catapult train (configs/warmup/fig5_steps_saved\.yaml[^`]*)` diverges at step (\d+)", text)
    assert m, "the Fig. 5 divergence check is not recorded"
    tokens = m.group(1).split()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        summary = run(load_config(ROOT / tokens[0], tokens[1:])).summary
    finally:
        torch.set_num_threads(threads)
    assert summary["status"] == "diverged"
    assert summary["diverged_at"] == int(m.group(2))


def test_fig2_command_stops_adam_without_warmup_at_the_recorded_step():
    # The single-seed Fig. 2 table: "| adam | 1 | diverged (step 1) | ..."
    import torch

    from catapult.engine import run
    from catapult.sweep.spec import expand, load_sweep

    path = "configs/adam/fig2_mechanisms.yaml"
    heading = next(h for h, _ in sections(RESULTS) if path in h)
    body = dict(sections(RESULTS))[heading]
    overrides = next(ov for sub, p, ov in commands(body) if p == path)
    step = int(re.search(r"^\| adam \| 1 \| diverged \(step (\d+)\) \|", body, flags=re.M).group(1))
    cell = next(c for c in expand(*load_sweep(ROOT / path, overrides))
                if c.config["optimizer"]["name"] == "adam" and c.config["schedule"]["warmup_steps"] == 1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        summary = run(cell.config).summary
    finally:
        torch.set_num_threads(threads)
    assert summary["status"] == "diverged"
    assert summary["diverged_at"] == step
