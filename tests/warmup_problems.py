"""Small problems the schedule and warmup tests share (tests/test_schedules.py,
tests/test_persistent_warmup.py)."""
import torch


def half_mse(out, y):
    return 0.5 * ((out - y) ** 2).mean()


class TwoLayer(torch.nn.Module):
    """f(x) = V relu(U x / sqrt(d)) / sqrt(width): the catapult regime of wide networks."""

    def __init__(self, d, width, k):
        super().__init__()
        self.U = torch.nn.Parameter(torch.randn(width, d, dtype=torch.float64))
        self.V = torch.nn.Parameter(torch.randn(k, width, dtype=torch.float64))

    def forward(self, x):
        h = torch.relu(x @ self.U.T / self.U.shape[1] ** 0.5)
        return h @ self.V.T / self.V.shape[1] ** 0.5


def catapult_problem(seed=0, width=256):
    torch.manual_seed(seed)
    x = torch.randn(64, 16, dtype=torch.float64)
    y = torch.nn.functional.one_hot(torch.randint(0, 4, (64,)), 4).double()
    return TwoLayer(16, width, 4), (x, y)


def two_group_sgd(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    opt = torch.optim.SGD([
        {"params": model[0].parameters(), "lr": 123.0},                  # no lr_mult -> 1
        {"params": model[1].parameters(), "lr": 123.0, "lr_mult": 0.25},
    ], lr=123.0)
    return model, opt
