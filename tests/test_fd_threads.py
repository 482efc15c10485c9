"""float32 finite-difference sharpness at different thread counts: the digits move (torch.dot over
the parameter vector, in the Lanczos recurrence, splits its float32 sum by thread; the products
themselves came out bit for bit equal at 1 and 4 threads on this problem), and the certificate's
``error_bound`` covers it. Truth: a float64 solve with exact products at tol 1e-10. Stop 61 found
no defect: this pins the promise (each value within its bound of the truth, so the two within the
sum of their bounds), not the digits."""
from __future__ import annotations

import torch
import torch.nn as nn

import catapult


def test_the_bound_covers_what_the_thread_count_changes():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 256), nn.Tanh(), nn.Linear(256, 256), nn.Tanh(), nn.Linear(256, 10))
    gen = torch.Generator().manual_seed(1)
    batch = (torch.randn(256, 32, generator=gen), torch.randint(0, 10, (256,), generator=gen))
    loss_fn = nn.CrossEntropyLoss()
    truth = catapult.sharpness(model, loss_fn, batch, dtype=torch.float64, tol=1e-10, max_iter=300).value
    threads = torch.get_num_threads()
    ests = []
    try:
        for count in (1, 4):   # 76,810 parameters: torch.dot's float32 sum is split by thread
            torch.set_num_threads(count)
            ests.append(catapult.sharpness(model, loss_fn, batch, hvp="finite_difference", coarse=None))
    finally:
        torch.set_num_threads(threads)
    for est in ests:
        assert est.converged and est.error_bound <= 1e-3
        assert abs(est.value - truth) / abs(truth) <= est.error_bound
    assert abs(ests[0].value - ests[1].value) / abs(truth) <= ests[0].error_bound + ests[1].error_bound
