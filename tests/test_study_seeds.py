"""bench/study_seeds.py's tables from a store of hand-made runs, every number worked out by hand
(the docstring's definitions): Fig. 2's sharpness and spike columns, Fig. 5's persistent-warmup
rows and the largest loss rise after step 5."""
from __future__ import annotations

from bench_module import bench_module


def _study():
    return bench_module("study_seeds")


class FakeStore:
    """The two Store methods the study reads: ``cells()`` and ``metrics(id)``."""

    def __init__(self, runs):
        self.runs = runs  # [(cell, metrics rows)]

    def cells(self):
        return [dict(cell, id=i) for i, (cell, _) in enumerate(self.runs)]

    def metrics(self, cell_id):
        return self.runs[cell_id][1]


def _row(lines, *first):
    """The table row whose first cells are ``first``, as a list of its cells."""
    for line in lines.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if tuple(cells[:len(first)]) == first:
            return cells
    raise AssertionError(f"no row {first} in\n{lines}")


def _fig2_run(name, sharp):
    """``sharp``: (step, train loss, sharpness, threshold) rows."""
    cell = dict(config=dict(optimizer=dict(name=name), schedule=dict(warmup_steps=1), seed=0), status="finished",
                summary=dict(final_train_loss=0.5, final_train_accuracy=0.9))
    return cell, [dict(step=t, train_loss=loss, sharpness=s, threshold=th) for t, loss, s, th in sharp]


def test_fig2_columns_are_the_first_measurement_the_first_step_at_the_threshold_and_the_spike(tmp_path):
    adam = [(0, 2.0, 100.0, 50.0),     # initial 100, 100 / 50 = 2 times the threshold
            (1, 3.0, None, None),      # the loss peaks: 3 / 2 = 1.5 times the initial loss
            (2, 1.0, 40.0, 40.0),      # first step at the threshold (at, not below)
            (3, 0.5, 20.0, 80.0)]      # final: 20 / 80 = 0.25
    gi = [(0, 2.0, 10.0, 5.0), (1, 1.0, 5.0, 4.0)]   # always above its threshold
    text = _study().fig2(FakeStore([_fig2_run("adam", adam), _fig2_run("gi-adam", gi)]), tmp_path / "f.png")
    row = _row(text, "adam", "1")
    assert row[3:8] == ["100 (1 seed)", "2 (1 seed)", "2", "0.25 (1 seed)", "1.5 (1 seed)"]
    assert _row(text, "gi-adam", "1")[5] == "never"
    assert "Adam / GI-Adam on the same seed: 10 (1 seed) over 1 seeds (1 pairs)" in text


def test_fig2_adam_over_gi_adam_spread_is_over_seeds_not_over_repeated_t_wrm_rows(tmp_path):
    # Step 0 comes before warmup acts, so each seed's Adam / GI-Adam pair repeats in every T_wrm
    # row: ratios 6, 20, 22 on seeds 0-2 at T_wrm 1 and 64. The replicates are the 3 seeds:
    # mean 16, sample std sqrt(((16-6)^2 + 4^2 + 6^2) / 2) = sqrt(76) = 8.72; over the 6
    # repeated pairs it would read sqrt(304 / 5) = 7.80.
    runs = []
    for T in (1, 64):
        for seed, ratio in enumerate((6.0, 20.0, 22.0)):
            for name, s0 in (("adam", 10.0 * ratio), ("gi-adam", 10.0)):
                cell, rows = _fig2_run(name, [(0, 2.0, s0, 5.0), (1, 1.0, 1.0, 5.0)])
                cell["config"] = dict(cell["config"], schedule=dict(warmup_steps=T), seed=seed)
                runs.append((cell, rows))
    text = _study().fig2(FakeStore(runs), tmp_path / "f.png")
    assert "Adam / GI-Adam on the same seed: 16 ± 8.72 over 3 seeds (6 pairs)" in text


def _fig5_run(warmup, T, losses, passes=0, reached=None):
    cell = dict(config=dict(optimizer=dict(lr=0.1), schedule=dict(warmup=warmup, warmup_steps=T), seed=0),
                status="finished", lr_target=0.1,
                summary=dict(search_forward_passes=passes, lr_critical=0.05 if passes else None,
                             lr_target_reached_at=reached))
    return cell, [dict(step=t, train_loss=v) for t, v in enumerate(losses)]


def _falls_at(hit, n=10):
    """Losses from 1 that first reach 0.5 of it at step ``hit``."""
    return [1.0 - 0.04 * t for t in range(hit)] + [0.45] * (n - hit)


def test_fig5_persistent_rows_charge_passes_and_compare_with_the_best_other_rule(tmp_path):
    persistent = [1.0, 0.9, 0.8, 0.45, 0.3, 1.2, 0.5, 0.25, 0.2, 0.3]   # reaches 0.5 L0 at step 3
    runs = [_fig5_run("linear", 2, _falls_at(5)), _fig5_run("catapult", 2, _falls_at(2), passes=4),
            _fig5_run("linear", 4, _falls_at(7)), _fig5_run("catapult", 4, _falls_at(3), passes=6),
            _fig5_run("persistent", 2, persistent, passes=2, reached=6),
            _fig5_run("persistent", 4, persistent, passes=2, reached=6)]   # the same run at each T_wrm
    text = _study().fig5(FakeStore(runs), tmp_path / "f.png", target=0.5)
    # persistent: step 3 + 2 passes / 2 = 4. The best other rule: at T_wrm 2 catapult's
    # 2 + 4 / 2 = 4 (linear 5), a tie, not a win; at T_wrm 4 catapult's 3 + 6 / 2 = 6 (linear 7),
    # a win. lr_trgt reached at step 6.
    row = _row(text, "0.1", "1")
    assert row[2:] == ["6.0 (1 seed)", "2.0 (1 seed)", "3.0 (1 seed)", "4.0 (1 seed)",
                       "2: 4.0 (1 seed); 4: 6.0 (1 seed)", "1 of 2"]
    # the largest L_t / min_{s<t} L_s for t > 5: step 6, 0.5 / 0.3 (step 5's spike, 1.2 / 0.3,
    # is not after step 5; step 9's 0.3 / 0.2 = 1.5 is smaller)
    assert _row(text, "0.1", "persistent", "-")[3:] == ["3.00e-01 (1 seed)", "1.67 (1 seed)"]
    assert _row(text, "0.1", "linear", "2")[4] == "1.00 (1 seed)"   # a loss that never rises


def test_radam_rectification_is_torch_radams_step_over_lr_under_a_constant_gradient():
    import torch

    p = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.RAdam([p], lr=1.0, betas=(0.9, 0.999), eps=0.0)
    study = _study()
    for t in range(1, 401):
        before = p.detach().clone()
        p.grad = torch.ones(1, dtype=torch.float64)
        opt.step()
        step = float(before - p.detach())
        if t <= 5:   # rho_t <= 5: torch's un-rectified steps (momentum SGD), no r_t
            assert study.radam_rectification(t) == 0.0
        else:        # m_hat = v_hat = 1: the step is lr * r_t
            assert abs(step - study.radam_rectification(t)) < 1e-12, t


def _t1_run(name, T, steps, lr, seed, failed, acc=0.8):
    cell = dict(config=dict(optimizer=dict(name=name, lr=lr), schedule=dict(warmup_steps=T), train=dict(steps=steps),
                            seed=seed), status="diverged" if failed else "finished", best_test_accuracy=acc)
    return cell, []


def test_runlength_boundary_is_each_seeds_smallest_failed_lr_and_their_geometric_mean(tmp_path):
    runs = []
    # adam at 100 steps on lrs 0.125 .. 1: seed 0 fails at 0.5 and 1 (boundary 0.5), seed 1 at 0.25
    # only (a scattered failure: boundary 0.25), seed 2 at none (censored: > 1, counted as 1)
    for seed, fails in ((0, {0.5, 1.0}), (1, {0.25}), (2, set())):
        for lr in (0.125, 0.25, 0.5, 1.0):
            runs.append(_t1_run("adam", 1, 100, lr, seed, lr in fails))
    # adam with warmup 10 of 1000 steps (1% of T): both seeds fail at 1, seed 1 also at the
    # grid's smallest lr 0.5 (censored: <= 0.5)
    runs += [_t1_run("adam", 10, 1000, lr, seed, lr == 1.0 or (seed, lr) == (1, 0.5), acc=0.5 + 0.1 * seed)
             for seed in (0, 1) for lr in (0.5, 1.0)]
    interrupted, _ = _t1_run("adam", 10, 1000, 0.5, 2, False)
    runs.append((dict(interrupted, status="running"), []))   # a sweep stopped mid-cell: not an outcome
    text = _study().runlength([FakeStore(runs)], tmp_path / "f.png")
    boundaries = text.split("failed by the paper's rule")[1].split("Boundary")[0]
    # (0.5 * 0.25 * 1) ** (1/3) = 0.5; (1 * 0.5) ** (1/2) = 0.707
    assert _row(boundaries, "adam", "1")[2:] == ["> 0.5 (0.5, 0.25, > 1)", "-"]
    assert _row(boundaries, "adam", "1% of T")[2:] == ["-", "<= 0.707 (1, <= 0.5)"]
    # the accuracy table at T = 1000: lr 0.5 seed 0 finished (50 %), seed 1 failed; lr 1 both failed
    assert _row(text.split("T = 1000 steps")[1], "adam", "10")[2:4] == ["F 1/2; 50.0 (1 seed)", "F"]
    # no metrics: no failed run ever reached 50 % training accuracy, so each is an early failure
    early = text.split("without ever reaching 50% training accuracy")[1]
    assert _row(early, "adam", "1")[2] == "> 0.5 (0.5, 0.25, > 1)"
    assert (tmp_path / "f.png").exists()


def test_runlength_says_when_each_failed_run_failed(tmp_path):
    def run(seed, failed, accs, losses=None):
        cell, _ = _t1_run("radam", 1, 4, 0.5, seed, failed)
        losses = losses or [1.0] * len(accs)
        return cell, [dict(step=t, train_accuracy=a, train_loss=v) for t, (a, v) in enumerate(zip(accs, losses))]

    runs = [run(0, True, [0.1, 0.6, 0.9, 0.1]),                 # trained to step 2, then died
            run(1, True, [0.1, 0.2, 0.1, 0.1]),                 # never reached 50 %
            run(2, True, [0.1, 0.7, None, None], [1.0, 0.5, float("nan"), None]),   # non-finite at step 2
            run(3, False, [0.1, 0.6, 0.9, 0.95])]
    text = _study().runlength([FakeStore(runs)], tmp_path / "f.png")
    assert "- T = 4, radam, T_wrm 1: lr 0.5: 2, never, nan@2, -" in text
    # the early boundary counts only 'never' (seed 1): seeds 0, 2 trained, then failed; seed 3 finished
    early = text.split("without ever reaching 50% training accuracy")[1]
    assert _row(early, "radam", "1")[2] == "~ 0.5 (> 0.5, <= 0.5, > 0.5, > 0.5)"


def test_runlength_prints_best_and_final_accuracies_and_counts_failures_after_training(tmp_path):
    def run(seed, failed, train, test):
        """``test``: {step: test accuracy}, logged at evaluations only."""
        cell, _ = _t1_run("adam", 1, 3, 0.25, seed, failed)
        return cell, [dict(step=t, train_accuracy=a, train_loss=1.0, test_accuracy=test.get(t))
                      for t, a in enumerate(train)]

    runs = [run(0, False, [0.2, 0.8, 1.0, 0.9], {0: 0.1, 2: 0.7, 3: 0.6}),   # finished
            run(1, True, [0.1, 0.6, 1.0, 0.1], {0: 0.1, 2: 0.8, 3: 0.1}),    # trained (1.0), then collapsed
            run(2, True, [0.1, 0.2, 0.1, 0.1], {0: 0.1, 2: 0.2, 3: 0.1})]    # never reached 50 %
    text = _study().runlength([FakeStore(runs)], tmp_path / "f.png")
    table = text.split("Best and final accuracy (%) per cell")[1]
    # by hand: best test 0.7, 0.8, 0.2 -> mean 56.67, sample std sqrt(((13.33)^2 + (23.33)^2 + (36.67)^2) / 2) = 32.15;
    # final test 0.6, 0.1, 0.1 -> 26.67 ± 28.87; best train 1.0, 1.0, 0.2 -> 73.33 ± 46.19;
    # final train 0.9, 0.1, 0.1 -> 36.67 ± 46.19; 2 of 3 failed, 1 of 3 after reaching 50 %
    assert _row(table, "3", "adam", "1", "0.25")[4:] == ["56.7 ± 32.1", "26.7 ± 28.9", "73.3 ± 46.2",
                                                       "36.7 ± 46.2", "2/3", "1/3"]


def test_runlength_gives_the_lr_and_lowest_loss_where_a_trained_run_failed(tmp_path):
    def run(seed, failed, accs, losses, lrs):
        cell, _ = _t1_run("adam", 2, 5, 0.25, seed, failed)
        return cell, [dict(step=t, train_accuracy=a, train_loss=v, lr=r)
                      for t, (a, v, r) in enumerate(zip(accs, losses, lrs))]

    lrs = [0.0, 0.125, 0.25, 0.25, 0.25]
    runs = [run(0, True, [0.1, 0.6, 1.0, 0.3, 0.1], [1.0, 0.5, 1e-6, 0.2, 0.3], lrs),   # last >= 50% at step 2
            run(1, True, [0.1, 0.2, 0.1, 0.1, 0.1], [1.0] * 5, lrs),                     # never trained: '-'
            run(2, True, [0.1, 0.7, 0.2, 0.1, 0.1], [1.0, 0.4, 0.9, float("nan"), 0.5], lrs),  # last at step 1
            run(3, False, [0.1, 0.6, 0.9, 0.95, 1.0], [1.0] * 5, lrs),                   # finished: '-'
            # exactly 50% at step 3 (its last such step); a non-finite loss at step 0 is left out of the min
            run(4, True, [0.1, 0.6, 0.2, 0.5, 0.1], [float("nan"), 0.3, 0.7, 0.2, 0.9], lrs)]
    text = _study().runlength([FakeStore(runs)], tmp_path / "f.png")
    # seed 0: step 2, lr there 0.25, min loss over steps 0-2 = 1e-6; seed 2: step 1, lr 0.125, min 0.4;
    # seed 4: step 3, lr 0.25, min of the finite losses over steps 0-3 = 0.2
    assert ("- T = 5, adam, T_wrm 2: lr 0.25: 2 @ lr 0.25, min loss 1.0e-06, -, 1 @ lr 0.125, min loss 4.0e-01, -, "
            "3 @ lr 0.25, min loss 2.0e-01" in text.split("Failed runs that had trained")[1])
