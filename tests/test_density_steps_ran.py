"""What the spectral density ran: a Lanczos run stops at the operator's dimension n and at an
invariant subspace (an operator with d distinct eigenvalues: at most d steps), so
SpectralDensity.matvecs counts the products spent and `catapult spectrum`'s summary says the
steps that ran, not those asked (it said "2 runs x 1000 steps" of a 235-parameter model, whose
runs take 235). Truth: the dense float64 Hessian's size and its distinct eigenvalues."""
from __future__ import annotations

import numpy as np
import torch

import catapult
from catapult.engine.spectrum_study import format_spectrum, measure_spectrum
from dense_curvature import dense_hessian
from test_spectrum_cli import CONFIG


def test_the_summary_says_the_steps_that_ran():
    from catapult.engine.build import build_run

    setup = build_run(CONFIG)
    n = dense_hessian(setup.model, setup.loss_fn, setup.batches.batch(0)).shape[0]
    s = measure_spectrum(CONFIG, top_k=0, trace_matvecs=0, density_runs=2, density_steps=1000)
    assert s["density_steps"] == 1000 and s["density"].nodes.shape == (2, n)
    assert f"spectral density (SLQ, 2 runs x {n} steps, 1000 asked: at most one per parameter" in format_spectrum(s)
    assert s["density_products"] == s["density"].matvecs <= 2 * n


def test_runs_that_reach_an_invariant_subspace_count_what_they_spent():
    """H = diag(4, 1, 0, 0) (x = (2,0,0,0), (0,1,0,0), MSE): 3 distinct eigenvalues, so each run
    ends within 3 of its 4 steps; the nodes are padded to 4 with zero weights."""
    model = torch.nn.Linear(4, 1, bias=False).double()
    batch = (torch.tensor([[2.0, 0, 0, 0], [0, 1.0, 0, 0]], dtype=torch.float64), torch.zeros(2, 1, dtype=torch.float64))
    loss = torch.nn.MSELoss()
    distinct = len(np.unique(np.round(np.linalg.eigvalsh(dense_hessian(model, loss, batch).numpy()), 9)))
    assert distinct == 3
    dens = catapult.spectral_density(model, loss, batch, runs=5, steps=40)
    assert dens.nodes.shape == (5, 4) and dens.matvecs <= 5 * distinct
    shown = format_spectrum(dict(name="m", curvature="hessian", preconditioned=False, weights=None, batch_size=2,
                                 n_params=4, eigenvalues=[], trace=None, density=dens, density_runs=5,
                                 density_steps=40, density_products=dens.matvecs))
    assert (f"(SLQ, 5 runs x 4 steps, 40 asked: at most one per parameter; {dens.matvecs} products, runs that "
            "reached an invariant subspace stopped early)") in shown
