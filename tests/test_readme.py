"""The README, tried as a new user would: its Python snippets run as written, in order, in a
fresh interpreter, and the commands and configs it names exist."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_readme_has_a_tour():
    blocks = python_blocks(README)
    assert len(blocks) >= 3
    assert "make demo" in README and "make test" in README


def test_readme_python_snippets_run_as_written(tmp_path):
    # One interpreter for all blocks, as a reader pasting them one after another would.
    script = "\n\n".join(python_blocks(README))
    # The worker's thread share (conftest): torch's default of every core, beside the other test
    # worker, spun 245 s of a 10 s run on 2 cores.
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, env=env,
                          text=True, timeout=1200)  # a hang guard: 300 s ran out on 2 cores shared with 5 sessions
    assert proc.returncode == 0, proc.stderr[-4000:]
    # The first snippet's claim: warmup drives the sharpness down from lambda_0 toward 2/lr_t.
    values = [float(m) for m in re.findall(r"sharpness\s+([0-9.]+)\s+2/lr_t", proc.stdout)]
    assert values and values[-1] < 0.5 * values[0], proc.stdout
    # The numbers the prose quotes for the snippets' own output.
    quoted = float(re.search(r"falls from about (\d+)", README).group(1))
    assert abs(values[0] - quoted) <= 1, (values[0], quoted)
    lr_c = dict(re.findall(r"(Adam|GIAdam)\s+first-step lr_c = ([0-9.e+-]+)", proc.stdout))
    pre = dict(re.findall(r"(Adam|GIAdam)\s+first-step.*pre-conditioned sharpness ([0-9.e+-]+)",
                          proc.stdout))
    assert set(lr_c) == set(pre) == {"Adam", "GIAdam"}, proc.stdout
    # Adam's first-step denominator is |g| + eps, GI-Adam's |g| / sqrt(1 - b2) + eps: between 1x and
    # 1/sqrt(1 - b2) ~ 31.6x apart. Not a fixed figure: the first snippet's run crosses the edge of
    # stability, so the trained weights follow the rounding (5.1 on one machine at 1 thread; 5.84 at
    # 1 thread and 8.25 at 2 on another, for the same code).
    ratio = float(pre["Adam"]) / float(pre["GIAdam"])
    assert re.search(r"up to 1/sqrt\(1 - b2\) ~ 32x larger", README)
    assert 1 < ratio <= 1 / (1 - 0.999) ** 0.5, ratio
    quoted = float(re.search(r"first-step lr_c ~(\d+)x Adam's", README).group(1))
    assert abs(float(lr_c["GIAdam"]) / float(lr_c["Adam"]) - quoted) <= 0.1 * quoted, lr_c
    more_claims_of_the_snippets(proc.stdout)
    searches = re.search(r"(\d+) searches, (\d+) forward passes", proc.stdout)
    assert searches, proc.stdout
    words = {"six": 6}
    quoted = re.search(r"\((\w+) searches, ~(\d+) forward passes\)", README)
    assert int(searches.group(1)) == words[quoted.group(1)], searches.group(0)
    assert abs(int(searches.group(2)) - int(quoted.group(2))) <= 2, searches.group(0)


def more_claims_of_the_snippets(out: str) -> None:
    """What the snippets' comments and the prose beside them say of their printed lines (stop 63)."""
    import ast
    import math

    # `tracker.step(batch)  # a SharpnessRecord on steps 0, 5; else None` (every=5, 10 steps)
    records = ast.literal_eval(next(line for line in out.splitlines() if line.startswith("[(")))
    quoted = re.search(r"a SharpnessRecord on steps ([\d, ]+);", README).group(1)
    assert [r[0] for r in records] == [int(x) for x in quoted.split(",")], records
    # SμPar's hidden group: lr / (m_d m_rho), m_d = width / base_width, m_rho = density / base_density
    groups = [ast.literal_eval(line) for line in out.splitlines() if line.startswith("{'input'")]
    assert len(groups) == 2, groups
    assert groups[0]["hidden"] == pytest.approx(3e-3 / ((512 / 64) * (0.25 / 1.0)), rel=1e-12, abs=0)
    assert groups[0]["input"] == groups[0]["output"] == 3e-3
    assert groups[1]["hidden"] == round(2 ** -7 / ((128 / 64) * (1 / 16)), 5), groups[1]   # hidden: lr/(m_d m_rho)
    # `initial loss ... ~ ln(vocab)`: a GPT at init predicts about uniformly
    loss, log_vocab = map(float, re.search(r"initial loss ([\d.]+) ~ ln\(vocab\) = ([\d.]+)", out).groups())
    assert abs(loss - log_vocab) < 0.05 * log_vocab, (loss, log_vocab)
    # the persistent warmup's control: "the same lr_target from step 0 diverges to `nan`"
    assert "diverges to `nan`" in README
    assert math.isnan(float(re.search(r"constant lr_target: loss (\S+) after", out).group(1))), out
    # the run-builder snippet's `# 64 sgd`
    assert re.search(r"^64 sgd$", out, flags=re.M) and "# 64 sgd" in README


def test_commands_the_readme_names_exist():
    from catapult import cli

    parser = cli.build_parser()
    registered = set(parser._subparsers._group_actions[0].choices)
    named = set(re.findall(r"^\s+catapult ([a-z][a-z-]*) ", README, flags=re.M))
    assert named, "the README names no commands"
    assert named <= registered, named - registered


@pytest.mark.parametrize("path", sorted(set(re.findall(r"(configs/[\w/.-]+\.yaml)", README))))
def test_configs_the_readme_names_validate(path):
    from catapult.config import load_config

    assert (ROOT / path).is_file(), path
    # with the key=value overrides the README's commands give it (a paper config's data.root)
    overrides = sorted({tok for line in README.splitlines() if path in line
                        for tok in line.split() if re.fullmatch(r"[a-z_][\w.]*=\S+", tok)})
    load_config(ROOT / path, overrides)


def test_the_layout_table_is_the_import_contract():
    """The README's layer table names every module of pyproject.toml's import-linter layers, each in its
    layer (bottom up): it had left out the two lowest layers' modules and six others (stop 63)."""
    block = re.search(r'^type = "layers"\nlayers = \[\n(.*?)^\]', (ROOT / "pyproject.toml").read_text(),
                      flags=re.S | re.M).group(1)   # (tomllib is Python 3.11's; the project takes 3.10)
    layers = re.findall(r'^\s*"([^"]+)",?$', block, flags=re.M)[::-1]
    assert len(layers) >= 7, block
    table = dict(re.findall(r"^\| (\d+) \| (.*?) \|", README, flags=re.M))
    assert sorted(map(int, table)) == list(range(len(layers))), table
    for i, layer in enumerate(layers):
        modules = {m.strip().removeprefix("catapult.") for m in layer.split(":")}
        named = {m.rstrip("/") for m in re.findall(r"`([\w/]+)`", table[str(i)])}
        assert named == modules, (i, named ^ modules)


def test_the_search_delta_defaults_are_the_code_s():
    """`schedule.delta`'s defaults as the README states them (stop 63: it named the key, not its values,
    which differ from `critical_lr`'s own default for Adam)."""
    import inspect

    from catapult import critical_lr
    from catapult.config import load_config
    from catapult.engine.build import search_delta

    said = re.search(r"by default ([\d.]+) for SGD and ([\d.]+) for the Adam family, where Python's\s+"
                     r"`critical_lr\(\.\.\., delta=\)` is ([\d.]+) for every optimizer", README)
    assert said, "the README no longer states schedule.delta's defaults"
    sgd, adam, python = map(float, said.groups())
    assert search_delta(load_config(ROOT / "configs/warmup/fig5_steps_saved.yaml", [])) == sgd
    for name in ("adam", "adamw", "radam", "gi-adam"):
        config = load_config(ROOT / "configs/adam/fig2_mechanisms.yaml", [f"optimizer.name={name}"])
        assert search_delta(config) == adam, name
    assert inspect.signature(critical_lr).parameters["delta"].default == python


OUTPUT_FLAGS = ("--out", "--plot", "--store", "--trajectories-out", "--write-configs")


def block_lines(text: str) -> list[str]:
    """The README's indented lines, continuations joined."""
    lines, joined = text.splitlines(), []
    for line in lines:
        if joined and joined[-1].endswith("\\"):
            joined[-1] = joined[-1][:-1] + " " + line.strip()
        elif line.startswith("    "):
            joined.append(line.strip())
    return joined


def readme_commands(text: str) -> list[str]:
    """Every command the README gives: its indented lines (continuations joined) and its inline
    code spans that start with a program a reader would run."""
    joined = block_lines(text)
    inline = re.findall(r"`((?:catapult|python|torchrun|make) [^`\n]+)`", text)
    # and a command named by its subcommand alone (`export --out results/cells.csv` left results/ beside README.md)
    spans = re.findall(r"`((?:export|plot|report|transfer|spectrum|train|sweep) --[^`\n]+)`", text)
    inline += ["catapult " + c for c in spans
               if re.search(r"--[\w-]+[ =]\S", c)]   # a flag with its value, not `train --out` named in prose
    return [c for c in joined + inline if re.match(r"(catapult|python|torchrun|make)\b", c)]


def test_readme_commands_write_under_runs():
    """A README command run from the repository's root writes under runs/ (git-ignored): `--plot
    spectrum.png` and `--out cells.csv` left files beside README.md."""

    outputs = []
    for command in readme_commands(README):
        tokens = shlex.split(command.split(" # ")[0].replace("[", " ").replace("]", " "), comments=True)
        for flag, value in zip(tokens, tokens[1:] + [""]):
            if flag in OUTPUT_FLAGS:
                outputs.append((command, value))
            elif flag.split("=")[0] in OUTPUT_FLAGS:
                outputs.append((command, flag.split("=", 1)[1]))
    assert len(outputs) >= 10, outputs
    # a placeholder (STORE, DIR, FILE) is the reader's own choice
    wrong = [(c, v) for c, v in outputs if not (v.startswith("runs/") or v.isupper())]
    assert not wrong, wrong


def _variants(command: str) -> list[list[str]]:
    """``command``'s words, once without its optional ``[--flag a|b]`` group and once with each choice."""
    group = re.search(r"\[(--[\w-]+) ([\w|.-]+)\]", command)
    if not group:
        return [shlex.split(command, comments=True)]
    head, tail = command[:group.start()], command[group.end():]
    return [shlex.split(head + tail, comments=True)] + [
        shlex.split(f"{head}{group.group(1)} {value}{tail}", comments=True) for value in group.group(2).split("|")]


def test_readme_command_lines_parse(capsys):
    """Every `catapult` command of the README's indented blocks (`torchrun ... -m catapult` too) parses
    with the command's own parser: its flags exist and their values are among the choices. Only the
    subcommands' names were checked before, and the flags only by running the commands by hand."""
    from catapult import cli

    parser = cli.build_parser()
    parsed = []
    for command in block_lines(README):
        words = shlex.split(command, comments=True)
        if "catapult" not in words:
            continue
        for variant in _variants(command):
            args = variant[variant.index("catapult") + 1:]
            try:   # as `catapult` parses: overrides may follow the options (cli.main)
                known, extra = parser.parse_known_args(args)
            except SystemExit as exit_:   # `catapult --help` exits 0; a wrong flag or choice exits 2
                assert exit_.code == 0, (command, args, capsys.readouterr().err)
            else:
                overrides = [word for word in extra if "=" in word and not word.startswith("-")]
                assert extra == overrides and (not extra or hasattr(known, "overrides")), (command, extra)
            parsed.append(args)
    assert len(parsed) >= 20, parsed
    assert ["sweep", "CONFIG", "--store", "runs/s.db", "--executor", "ray"] in parsed, parsed


def _agrees_to_its_digits(quoted: str, value: float) -> bool:
    """``quoted`` is ``value`` rounded to the places it shows ('1100' of 1132, '46' of 46.18, '0.18' of 0.181)."""
    places = len(quoted.split(".")[1]) if "." in quoted else len(quoted.rstrip("0")) - len(quoted)
    return float(quoted) == round(value, places)


def test_the_gmp_step_0_figures_are_the_recorded_ones():
    """The Dynamic sparsity paragraph's figures for gmp's step 0 and its cost in the loss are
    bench/RESULTS.md's measurements, to the digits quoted (stop 64: it said mean |.| 44-48x and
    67-81x for the recorded 46.2-48.3 and 67.3-79.7, and 0.19 above SP's for 6.250 - 6.069)."""
    results = (ROOT / "bench" / "RESULTS.md").read_text()
    table = results.split("**gmp at step 0.**")[1].split("\n\n")[1]
    rows = {r[0]: [tuple(map(float, c)) for c in re.findall(r"([\d.]+) \(([\d.]+)\)", r[1])]
            for r in re.findall(r"^\| (1/\d+) \|(.*)\|$", table, flags=re.M)}
    assert set(rows) == {"1/2", "1/8", "1/32"} and all(len(v) == 5 for v in rows.values()), rows
    said = re.search(r"output (\d+)-(\d+)x\s+the mean square of the static-mask SμPar model, the attention and "
                     r"MLP blocks (\d+)-(\d+)x \(mean \|\.\| (\d+)-(\d+)x;\s+(\d+)x at 1/2, (\d+)-(\d+)x at 1/8\)",
                     README)
    assert said, "the README no longer quotes gmp's step 0 as before"
    layers = sorted(square for square, _ in rows["1/32"][:2])
    blocks = sorted(square for square, _ in rows["1/32"][2:4])
    block_means = sorted(mean for _, mean in rows["1/32"][2:4])
    at_half = sorted(square for square, _ in rows["1/2"][2:4])
    at_eighth = sorted(square for square, _ in rows["1/8"][2:4])
    quoted, recorded = said.groups(), (*layers, *blocks, *block_means, at_half[0], *at_eighth)
    assert all(_agrees_to_its_digits(q, v) for q, v in zip(quoted, recorded)), list(zip(quoted, recorded))
    assert all(_agrees_to_its_digits("4", v) for v in at_half), at_half
    # the cost in training: best validation loss at 1/16, SμPar against SP ("GMP instead of RigL")
    gmp = results.split("#### GMP instead of RigL")[1].split("####")[0]
    best = {p: float(re.search(rf"^\| {p} \| 1/16 \|.*?\*\*([\d.]+) ±", gmp, flags=re.M).group(1))
            for p in ("SP", "SμPar")}
    gap = re.search(r"SμPar's best validation loss at width\s+64 and 1/16 lies ([\d.]+) above SP's", README)
    assert gap and _agrees_to_its_digits(gap.group(1), best["SμPar"] - best["SP"]), (gap, best)


def test_the_supar_row_figures_are_the_recorded_ones():
    """The SμPar paragraph's figures for rows with few live inputs (width 64, density 1/64) are
    bench/RESULTS.md's "Coordinates at init" and "Rows" tables, to the digits quoted, so a rerun of
    bench/supar_kept_density.py that changes the tables shows here (they agree at stop 64)."""
    results = (ROOT / "bench" / "RESULTS.md").read_text()
    section = results.split("## SμPar's density: counts, rows and gmp's step 0")[1].split("**gmp at step 0.**")[0]
    cells = {}   # (width, density) -> [(mean |y| ratio, mean y^2 ratio)] for q/k/v, MLP in, attention, MLP
    width = None
    for line in section.splitlines():
        if re.match(r"^\| (\*\*)?width (\d+)", line):
            width = int(re.search(r"width (\d+)", line).group(1))
        elif width and (row := re.match(r"^\| (1/\d+) \|(.*)\|$", line)):
            cells[width, row.group(1)] = [tuple(map(float, c)) for c in
                                          re.findall(r"([\d.]+) \[([\d.]+)\]", row.group(2))]
    said = re.search(r"(\d+)% of those units have none at init: their mean \|output\| at init reads ([\d.]+)x\s+"
                     r"\(q/k/v\) and ([\d.]+)x \(MLP\) their dense value, and the attention and MLP blocks' that "
                     r"the coordinate check plots\s+([\d.]+)x and ([\d.]+)x, while the mean square of q/k/v and "
                     r"the MLP's first matrix stays within ([\d.]+)%\s+\(q/k/v's mean\s+\|output\|: ([\d.]+)x at "
                     r"1/32, ([\d.]+)x at 1/16, ([\d.]+)x at 1/8; at width 256, ([\d.]+)x at 1/64", README)
    assert said, "the README no longer quotes the rows' figures as before"
    none, qkv, mlp_in, attn, mlp, within, at32, at16, at8, at256 = said.groups()
    rows = re.search(r"^\| 64 x 64 \| 1/64 \| 1 \| [\d.]+ \| ([\d.]+) \|", section, flags=re.M)
    assert _agrees_to_its_digits(none, 100 * float(rows.group(1))), (none, rows.group(0))
    sparsest = cells[64, "1/64"]
    for quoted, (mean_abs, _) in zip((qkv, mlp_in, attn, mlp), sparsest):
        assert _agrees_to_its_digits(quoted, mean_abs), (quoted, sparsest)
    assert all(round(100 * abs(square - 1), 9) <= float(within) for _, square in sparsest[:2]), (within, sparsest)
    for quoted, cell in ((at32, cells[64, "1/32"]), (at16, cells[64, "1/16"]), (at8, cells[64, "1/8"]),
                         (at256, cells[256, "1/64"])):
        assert _agrees_to_its_digits(quoted, cell[0][0]), (quoted, cell)


def test_every_shipped_sparse_config_keeps_its_asked_density():
    """The SμPar paragraph: the kept density 'is the asked density wherever density * numel is a whole
    number (every shipped config: powers of two)'. Every (width, density) a config under configs/ trains
    (its model, its sweep grid, its coordinate check's densities) gives each mask part of a GPT a whole
    count, so a config added off that rule shows here."""
    import yaml

    from catapult.models import GPT

    probe = 16   # mask shapes of a GPT at width 16, as multiples of the width (one block)
    with torch.device("meta"):
        model = GPT(8, d_model=probe, n_layers=1, n_heads=1, context=4, density=0.5)
    shapes = [(name, m.mask.shape[0] / probe, m.mask.shape[1] / probe, 3 if name.endswith("qkv") else 1)
              for name, m in model.named_modules() if getattr(m, "mask", None) is not None]
    assert len(shapes) == 4, shapes
    checked = []
    for path in sorted((ROOT / "configs").rglob("*.yaml")):
        config = yaml.safe_load(path.read_text())
        if not isinstance(config, dict) or (config.get("model") or {}).get("name") != "gpt":
            continue
        grid = (config.get("sweep") or {}).get("grid") or {}
        widths = grid.get("model.width", [config["model"].get("width", 128)])
        densities = grid.get("model.density", [config["model"].get("density", 1.0)])
        pairs = [(w, d) for w in widths for d in densities]
        pairs += [(config["model"]["width"], d) for d in (config.get("coord_check") or {}).get("densities", [])]
        for width, density in pairs:
            for name, rows, cols, parts in shapes:
                count = density * (rows * width) * (cols * width) / parts
                assert count == round(count), (path.name, width, density, name, count)
            checked.append((path.name, width, density))
    assert len({name for name, _, _ in checked}) >= 10 and any(d < 1 for _, _, d in checked), checked
