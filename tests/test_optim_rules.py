"""catapult.optim.rules against torch.optim (SGD, Adam, AdamW, RAdam) and the GIAdam class, in
float64; per-member tensor hyperparameters against separate runs; preconditioner / direction /
threshold against the real next step and closed forms; the registry."""
from __future__ import annotations

import inspect

import pytest
import torch

from catapult.optim import GIAdam, registry, rules

STEPS = 8
TOL = 1e-12


def _params(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(4, 3, generator=g, dtype=torch.float64),
            torch.randn(5, generator=g, dtype=torch.float64)]


def _grads(params, gen):
    return [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]


def _close(a, b, tol=TOL):
    return torch.allclose(a, b, rtol=tol, atol=tol)


# (rule, torch class, options): momentum / nesterov / dampening / weight decay variants
TORCH_CASES = [
    ("sgd", torch.optim.SGD, dict(lr=0.1)),
    ("sgd", torch.optim.SGD, dict(lr=0.1, weight_decay=0.05)),
    ("sgd", torch.optim.SGD, dict(lr=0.1, momentum=0.9)),
    ("sgd", torch.optim.SGD, dict(lr=0.1, momentum=0.8, dampening=0.3, weight_decay=0.01)),
    ("sgd", torch.optim.SGD, dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.02)),
    ("sgd", torch.optim.SGD, dict(lr=0.1, momentum=0.5, maximize=True)),
    ("adam", torch.optim.Adam, dict(lr=0.01)),
    ("adam", torch.optim.Adam, dict(lr=0.01, betas=(0.8, 0.95), eps=1e-3, weight_decay=0.1)),
    ("adam", torch.optim.Adam, dict(lr=0.01, amsgrad=True, weight_decay=0.1)),
    ("adam", torch.optim.Adam, dict(lr=0.01, maximize=True)),
    ("adamw", torch.optim.AdamW, dict(lr=0.01, weight_decay=0.1)),
    ("adamw", torch.optim.AdamW, dict(lr=0.01, weight_decay=0.1, amsgrad=True)),
    ("radam", torch.optim.RAdam, dict(lr=0.01)),                    # rho_t <= 5 throughout
    ("radam", torch.optim.RAdam, dict(lr=0.01, betas=(0.9, 0.9), weight_decay=0.1)),  # both
    ("radam", torch.optim.RAdam, dict(lr=0.01, betas=(0.9, 0.9), weight_decay=0.1,
                                      decoupled_weight_decay=True)),
]


@pytest.mark.parametrize("rule, cls, options", TORCH_CASES)
def test_update_matches_torch_optim(rule, cls, options):
    params = _params()
    torch_params = [p.clone().requires_grad_(True) for p in params]
    opt = cls(torch_params, foreach=False, **options)
    state = rules.init(rule, params, options)
    gen = torch.Generator().manual_seed(1)
    for _ in range(STEPS):
        grads = _grads(params, gen)
        for p, g in zip(torch_params, grads):
            p.grad = g.clone()
        opt.step()
        before = [p.clone() for p in params] + [g.clone() for g in grads]
        new_params, state = rules.update(rule, params, grads, state, options)
        assert all(torch.equal(a, b) for a, b in zip(before, params + grads))   # pure
        params = new_params
        for p, q in zip(params, torch_params):
            assert _close(p, q.detach())
    for i, q in enumerate(torch_params):
        ref = opt.state[q]
        if rule == "sgd":
            if ref.get("momentum_buffer") is not None:
                assert _close(state.momentum_buffer[i], ref["momentum_buffer"])
        else:
            assert _close(state.exp_avg[i], ref["exp_avg"])
            assert _close(state.exp_avg_sq[i], ref["exp_avg_sq"])
            if options.get("amsgrad"):
                assert _close(state.max_exp_avg_sq[i], ref["max_exp_avg_sq"])
    assert state.step == STEPS


def test_update_detects_a_wrong_rule():
    """The comparison above can fail: Adam's rule is not AdamW's when weight decay is on."""
    params = _params()
    grads = _grads(params, torch.Generator().manual_seed(1))
    hp = dict(lr=0.01, weight_decay=0.1)
    a, _ = rules.update("adam", params, grads, rules.init("adam", params, hp), hp)
    w, _ = rules.update("adamw", params, grads, rules.init("adamw", params, hp), hp)
    assert not _close(a[0], w[0])


@pytest.mark.parametrize("v0", ["grad", "random", 3.0, 0.0])
@pytest.mark.parametrize("v_bias_correction", [True, False])
def test_gi_adam_rule_matches_class(v0, v_bias_correction):
    params = _params()
    torch_params = [p.clone().requires_grad_(True) for p in params]
    opt = GIAdam(torch_params, lr=0.01, weight_decay=0.05, v0=v0, seed=4,
                 v_bias_correction=v_bias_correction)
    hp = dict(lr=0.01, weight_decay=0.05, v0=v0, seed=[4, 5],   # seed + parameter index
              v_bias_correction=v_bias_correction)
    state = rules.init("gi-adam", params, hp)
    assert state.exp_avg_sq == [None, None]
    gen = torch.Generator().manual_seed(2)
    for step in range(STEPS):
        grads = _grads(params, gen)
        for p, g in zip(torch_params, grads):
            p.grad = g.clone()
        opt.step()
        params, state = rules.update("gi-adam", params, grads, state, hp)
        if step == 0 and v0 == "grad":           # v_1 = b2 v_0 + (1 - b2) g^2 = g^2
            assert _close(state.exp_avg_sq[0], grads[0] ** 2)
        for p, q in zip(params, torch_params):
            assert torch.equal(p, q.detach())
    for i, q in enumerate(torch_params):
        assert torch.equal(state.exp_avg_sq[i], opt.state[q]["exp_avg_sq"])


def test_gi_adam_class_with_parameters_at_different_step_counts():
    """A parameter that misses a gradient falls one step behind; each keeps its own count."""
    params = _params()
    torch_params = [p.clone().requires_grad_(True) for p in params]
    opt = GIAdam(torch_params, lr=0.01, weight_decay=0.05)
    hp = dict(lr=0.01, weight_decay=0.05)
    singles = [([p], rules.init("gi-adam", [p], hp)) for p in params]
    gen = torch.Generator().manual_seed(4)
    for step in range(STEPS):
        grads = _grads(params, gen)
        for i, (p, g) in enumerate(zip(torch_params, grads)):
            p.grad = None if (i == 0 and step == 2) else g.clone()
            if p.grad is not None:
                singles[i] = rules.update("gi-adam", singles[i][0], [g], singles[i][1], hp)
        opt.step()
    for (ps, st), q in zip(singles, torch_params):
        assert torch.equal(ps[0], q.detach())
        assert int(opt.state[q]["step"]) == st.step
    assert singles[0][1].step == STEPS - 1


def test_gi_adam_with_v0_zero_is_adamw():
    params = _params()
    grads = _grads(params, torch.Generator().manual_seed(3))
    hp = dict(lr=0.01, weight_decay=0.05, v0=0.0)
    gi, _ = rules.update("gi-adam", params, grads, rules.init("gi-adam", params, hp), hp)
    w, _ = rules.update("adamw", params, grads, rules.init("adamw", params, hp), hp)
    assert all(torch.equal(a, b) for a, b in zip(gi, w))


# --------------------------------------------------------------------------------------------
# Per-member tensor hyperparameters: one call on a stack of 3 members == 3 separate calls
# --------------------------------------------------------------------------------------------
MEMBERS = [   # the last member has no momentum: with dampening, torch's buffer is d itself
    dict(lr=0.1, momentum=0.9, dampening=0.0, weight_decay=0.01, betas=(0.9, 0.999), eps=1e-8,
         v0=1.0, v_bias_correction=True),
    dict(lr=0.03, momentum=0.5, dampening=0.2, weight_decay=0.0, betas=(0.8, 0.9), eps=1e-4,
         v0=2.0, v_bias_correction=False),
    dict(lr=0.2, momentum=0.0, dampening=0.5, weight_decay=0.1, betas=(0.95, 0.95), eps=1e-6,
         v0=0.5, v_bias_correction=True),
]


def _stacked_hp(members, params):
    """Per-parameter lists of ``(N, 1, ...)`` columns broadcasting against ``(N, *shape)``."""
    def col(values, p):
        dtype = torch.bool if isinstance(values[0], bool) else p.dtype
        return torch.tensor(values, dtype=dtype).reshape(-1, *([1] * (p.dim() - 1)))

    hp = {}
    for key in ("lr", "momentum", "dampening", "weight_decay", "eps", "v0", "v_bias_correction"):
        hp[key] = [col([m[key] for m in members], p) for p in params]
    hp["beta1"] = [col([m["betas"][0] for m in members], p) for p in params]
    hp["beta2"] = [col([m["betas"][1] for m in members], p) for p in params]
    return hp


@pytest.mark.parametrize("rule, nesterov", [("sgd", False), ("sgd", True), ("adam", False),
                                           ("adamw", False), ("radam", False), ("gi-adam", False)])
def test_tensor_hyperparameters_equal_separate_runs(rule, nesterov):
    singles = [_params(seed) for seed in range(len(MEMBERS))]
    stack = [torch.stack([s[k] for s in singles]) for k in range(len(singles[0]))]
    hps = [dict(m, nesterov=nesterov) for m in MEMBERS]
    if nesterov:                                     # torch: nesterov needs dampening 0
        hps = [dict(h, dampening=0.0) for h in hps]
    hp = dict(_stacked_hp(hps, stack), nesterov=nesterov)
    states = [rules.init(rule, s, h) for s, h in zip(singles, hps)]
    stack_state = rules.init(rule, stack, hp)
    gen = torch.Generator().manual_seed(7)
    for _ in range(STEPS):
        grads = _grads(stack, gen)
        # the next step's preconditioner and direction (before the step), then the step
        P = rules.preconditioner(rule, grads, stack_state, hp, params=stack)
        u = rules.direction(rule, stack, grads, stack_state, hp)
        # RAdam has one once every member's next step is rectified (rho_t > 5: t >= 6 here)
        unrectified = rule == "radam" and stack_state.step + 1 < 6
        stack, stack_state = rules.update(rule, stack, grads, stack_state, hp)
        assert (P is None) == (rule == "sgd" or unrectified)
        for m in range(len(MEMBERS)):
            g_m = [g[m] for g in grads]
            P_m = rules.preconditioner(rule, g_m, states[m], hps[m], params=singles[m])
            u_m = rules.direction(rule, singles[m], g_m, states[m], hps[m])
            singles[m], states[m] = rules.update(rule, singles[m], g_m, states[m], hps[m])
            for k in range(len(stack)):
                assert _close(stack[k][m], singles[m][k])
                assert _close(u[k][m], u_m[k], tol=1e-10)
                if P is not None:
                    assert _close(P[k][m], P_m[k])
    thresholds = rules.threshold(rule, {k: (v[0] if isinstance(v, list) else v)
                                        for k, v in hp.items()})
    for m, h in enumerate(hps):
        assert float(thresholds.reshape(-1)[m]) == pytest.approx(rules.threshold(rule, h), rel=1e-12)


# --------------------------------------------------------------------------------------------
# direction and preconditioner: what the real next step does
# --------------------------------------------------------------------------------------------
def _stepped(cls, options, params, n_steps, gen):
    torch_params = [p.clone().requires_grad_(True) for p in params]
    opt = cls(torch_params, **options)
    for _ in range(n_steps):
        for p, g in zip(torch_params, _grads(params, gen)):
            p.grad = g
        opt.step()
    return torch_params, opt


def _rule_state(opt, torch_params, rule):
    """A rules.State from a torch optimizer's per-parameter state (all at one step)."""
    st = [opt.state.get(p, {}) for p in torch_params]
    if not st[0]:
        return None
    if rule == "sgd":
        return rules.State(step=1, momentum_buffer=[s.get("momentum_buffer") for s in st])
    return rules.State(step=int(st[0]["step"]), exp_avg=[s["exp_avg"] for s in st],
                       exp_avg_sq=[s["exp_avg_sq"] for s in st],
                       max_exp_avg_sq=[s.get("max_exp_avg_sq") for s in st])


DIRECTION_CASES = TORCH_CASES + [("gi-adam", GIAdam, dict(lr=0.01, weight_decay=0.05)),
                                 ("gi-adam", GIAdam, dict(lr=0.01, v_bias_correction=False,
                                                          v0=2.0))]


@pytest.mark.parametrize("n_steps", [0, 3])
@pytest.mark.parametrize("rule, cls, options", DIRECTION_CASES)
def test_direction_is_the_real_next_step(rule, cls, options, n_steps):
    gen = torch.Generator().manual_seed(5)
    torch_params, opt = _stepped(cls, options, _params(), n_steps, gen)
    hp = registry.hyperparameters(opt.param_groups[0])
    theta = [p.detach().clone() for p in torch_params]
    grads = _grads(theta, gen)
    u = rules.direction(rule, theta, grads, _rule_state(opt, torch_params, rule), hp)
    for p, g in zip(torch_params, grads):
        p.grad = g
    opt.step()
    lr = options["lr"]
    for t0, p, ui in zip(theta, torch_params, u):
        assert torch.allclose((t0 - p.detach()) / lr, ui, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("n_steps", [0, 3])
@pytest.mark.parametrize("rule, cls, options", [c for c in DIRECTION_CASES
                                                 if c[0] in ("adam", "gi-adam")])
def test_preconditioner_divides_the_real_next_step(rule, cls, options, n_steps):
    """Adam (no decoupled decay): theta - theta' = lr m' / P, m' the new first moment."""
    options = dict(options, weight_decay=0.0) if rule == "gi-adam" else options
    gen = torch.Generator().manual_seed(6)
    torch_params, opt = _stepped(cls, options, _params(), n_steps, gen)
    hp = registry.hyperparameters(opt.param_groups[0])
    theta = [p.detach().clone() for p in torch_params]
    grads = _grads(theta, gen)
    P = rules.preconditioner(rule, grads, _rule_state(opt, torch_params, rule), hp, params=theta)
    for p, g in zip(torch_params, grads):
        p.grad = g
    opt.step()
    for t0, p, Pi in zip(theta, torch_params, P):
        m = opt.state[p]["exp_avg"]
        assert torch.allclose(t0 - p.detach(), options["lr"] * m / Pi, rtol=1e-10, atol=1e-13)


def test_preconditioner_equals_curvature_code():
    from catapult.curvature.preconditioner import _adam_preconditioner

    gen = torch.Generator().manual_seed(8)
    for cls, options in [(torch.optim.Adam, dict(lr=0.01, weight_decay=0.1)),
                         (GIAdam, dict(lr=0.01, v0="random", seed=3))]:
        for n_steps in (0, 2):
            torch_params, opt = _stepped(cls, options, _params(), n_steps, gen)
            rule = registry.rule_for(opt, opt.param_groups[0])
            theta = [p.detach() for p in torch_params]
            grads = _grads(theta, gen)
            hp = registry.hyperparameters(opt.param_groups[0])
            if rule == "gi-adam":
                hp["seed"] = [3, 4]
            P = rules.preconditioner(rule, grads, _rule_state(opt, torch_params, rule), hp,
                                     params=theta)
            d, _ = _adam_preconditioner(opt, torch.cat([g.reshape(-1) for g in grads]),
                                        ["a", "b"], torch_params, False)
            ref = torch.cat([(1 / Pi).sqrt().reshape(-1) for Pi in P])
            assert torch.allclose(d, ref, rtol=1e-14, atol=0)


def test_preconditioner_is_none_without_a_fixed_one():
    params = _params()
    grads = _grads(params, torch.Generator().manual_seed(1))
    assert rules.preconditioner("sgd", grads, None, dict(lr=0.1)) is None
    assert rules.preconditioner("radam", grads, None, dict(lr=0.1)) is None
    with pytest.raises(ValueError, match="params"):
        rules.preconditioner("adam", grads, None, dict(lr=0.1, weight_decay=0.1))


# --------------------------------------------------------------------------------------------
# threshold
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rule, hp, expected", [
    ("sgd", dict(lr=0.1), 20.0),
    ("sgd", dict(lr=0.1, momentum=0.9), 38.0),
    ("sgd", dict(lr=0.1, momentum=0.5, dampening=0.5), 60.0),
    ("sgd", dict(lr=0.1, momentum=0.5, nesterov=True), 15.0),
    ("adam", dict(lr=0.1), 380.0),
    ("adamw", dict(lr=0.01, betas=(0.5, 0.9)), 600.0),
    ("gi-adam", dict(lr=0.1), 380.0),
    ("radam", dict(lr=0.1), 380.0),
])
def test_threshold_closed_forms(rule, hp, expected):
    assert rules.threshold(rule, hp) == pytest.approx(expected, rel=1e-14, abs=0)
    assert registry.get(rule).threshold(hp) == pytest.approx(expected, rel=1e-14, abs=0)


@pytest.mark.parametrize("rule, cls, options", [c for c in TORCH_CASES if not c[2].get("maximize")])
def test_threshold_equals_curvature_code(rule, cls, options):
    from catapult.curvature import instability_threshold

    opt = cls(_params(), **options)
    # RAdam's first step is un-rectified: compared with the Hessian's sharpness, which its coupled L2
    # lowers the threshold for (the pre-conditioned operator would hold it)
    operator = "hessian" if rule == "radam" else None
    assert rules.threshold(rule, registry.hyperparameters(opt.param_groups[0]), operator=operator) == \
        pytest.approx(instability_threshold(opt), rel=1e-15, abs=0)


def test_direction_equals_critical_lr_code():
    from catapult.critical_lr import next_step_direction

    gen = torch.Generator().manual_seed(9)
    for rule, cls, options in DIRECTION_CASES:
        torch_params, opt = _stepped(cls, options, _params(), 2, gen)
        theta = [p.detach() for p in torch_params]
        grads = _grads(theta, gen)
        u = rules.direction(rule if rule != "adam" else registry.rule_for(opt, opt.param_groups[0]),
                            theta, grads, _rule_state(opt, torch_params, rule),
                            registry.hyperparameters(opt.param_groups[0]))
        ref = next_step_direction(opt, list(zip(torch_params, grads)))
        for ui, (_, ri) in zip(u, ref):
            assert torch.equal(ui, ri), (rule, options)


# --------------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------------
def test_registry_table():
    assert registry.names() == ("sgd", "adam", "adamw", "radam", "gi-adam")
    assert registry.preconditioned_names() == ("adam", "adamw", "gi-adam")
    assert registry.get("giadam") is registry.get("gi-adam")
    assert registry.get("gi-adam").cls is GIAdam
    assert {registry.get(n).family for n in registry.names()} == {"sgd", "adam"}
    assert registry.get("sgd").family == "sgd" and registry.get("radam").family == "adam"
    with pytest.raises(KeyError, match="known: sgd"):
        registry.get("lion")
    p = [torch.zeros(2, requires_grad=True)]
    assert registry.rule_for(torch.optim.AdamW(p)) == "adamw"
    assert registry.rule_for(torch.optim.Adam(p)) == "adam"
    if "decoupled_weight_decay" in inspect.signature(torch.optim.Adam).parameters:   # not torch 2.2's
        assert registry.rule_for(torch.optim.Adam(p, decoupled_weight_decay=True),
                                 {"decoupled_weight_decay": True}) == "adamw"
    assert registry.rule_for(GIAdam(p)) == "gi-adam"
    with pytest.raises(NotImplementedError, match="Adagrad"):
        registry.spec_for(torch.optim.Adagrad(p))
    assert isinstance(registry.get("radam").build(p, lr=0.1), torch.optim.RAdam)


def test_config_lists_agree_with_the_registry():
    """config (layer 0) may not import optim (layer 2), so its own name list is checked here."""
    from catapult import config as cfg

    # (a missing list was a skip: config losing it passed as skipped)
    assert tuple(cfg.PRECONDITIONED_OPTIMIZERS) == registry.preconditioned_names()


def test_param_groups_accepts_every_name_the_registry_does():
    """param_groups' lr rules and the registry share one family table: every optimizer name and
    alias (``gi_adam`` was refused by param_groups while the registry built it) gets the same
    groups as its canonical name, and the family the registry reports."""
    import catapult
    from catapult.models import MLP
    from catapult.parametrize import optimizer_family

    model = MLP(8, 2, width=16, parametrization="mup")
    for name in registry.names():
        spec = registry.get(name)
        want = [(g["name"], g["lr_mult"]) for g in catapult.param_groups(model, 0.1, name)]
        for alias in (name, *spec.aliases):
            assert optimizer_family(alias) == spec.family == ("sgd" if name == "sgd" else "adam")
            assert [(g["name"], g["lr_mult"]) for g in catapult.param_groups(model, 0.1, alias)] == want


def _nadam_growth(lr: float) -> float:
    """Per-step growth of |x| under torch NAdam on L = x^2 / 2 with a frozen preconditioner
    (eps = 1 >> sqrt(v)) and mu_t = b1 (momentum_decay large), after the bias corrections fade."""
    x = torch.nn.Parameter(torch.tensor([1e-100], dtype=torch.float64))
    opt = torch.optim.NAdam([x], lr=lr, eps=1.0, momentum_decay=1e4)
    sizes = []
    for _ in range(300):
        opt.zero_grad()
        (0.5 * x ** 2).sum().backward()
        opt.step()
        sizes.append(max(abs(float(x.detach())), 1e-300))
    return (sizes[-1] / sizes[199]) ** 0.01


def test_instability_threshold_refuses_nadam():
    from catapult.curvature import instability_threshold

    # NAdam (lambda/P = 1 here) turns unstable near (2 + 2 b1) / ((1 + 2 b1)(1 - b1)) = 13.6,
    # far below Adam's 38 that instability_threshold used to return for it
    assert _nadam_growth(13.0) < 1.0 < _nadam_growth(20.0)
    with pytest.raises(TypeError, match="NAdam"):
        instability_threshold(torch.optim.NAdam(_params(), lr=0.1))
    # Adamax keeps Adam's (heavy-ball EMA over a diagonal preconditioner) rule
    assert instability_threshold(torch.optim.Adamax(_params(), lr=0.1)) == pytest.approx(380.0)


def test_amsgrad_preconditioner_uses_the_running_maximum_of_v():
    """After a large gradient then small ones, v has decayed below max_exp_avg_sq, so the next
    amsgrad step divides by sqrt(v_max): P (and the direction) must follow torch's real step.
    (With random gradients v only grows over a few steps, so max(v_max, v') == v' there.)"""
    options = dict(lr=0.01, betas=(0.9, 0.5), eps=1e-6, amsgrad=True)
    theta0 = [torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)]
    torch_params = [theta0[0].clone().requires_grad_(True)]
    opt = torch.optim.Adam(torch_params, foreach=False, **options)
    for scale in (10.0, 0.1, 0.1, 0.1):
        torch_params[0].grad = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64) * scale
        opt.step()
    ref = opt.state[torch_params[0]]
    assert bool((ref["max_exp_avg_sq"] > 4 * ref["exp_avg_sq"]).all())      # the case at hand
    theta = [torch_params[0].detach().clone()]
    grads = [torch.tensor([0.3, 0.2, -0.1], dtype=torch.float64)]
    state = _rule_state(opt, torch_params, "adam")
    P = rules.preconditioner("adam", grads, state, options, params=theta)
    u = rules.direction("adam", theta, grads, state, options)
    # the closed form, from torch's state: v' = b2 v + (1 - b2) g^2, P = (1 - b1^t)(sqrt(max(v_max, v') / (1 - b2^t)) + eps)
    t = int(ref["step"]) + 1
    v_next = torch.maximum(ref["max_exp_avg_sq"], 0.5 * ref["exp_avg_sq"] + 0.5 * grads[0] ** 2)
    expected = (1 - 0.9 ** t) * ((v_next / (1 - 0.5 ** t)).sqrt() + 1e-6)
    assert torch.allclose(P[0], expected, rtol=1e-12, atol=0)
    torch_params[0].grad = grads[0].clone()
    opt.step()
    step = theta[0] - torch_params[0].detach()
    assert torch.allclose(step, options["lr"] * opt.state[torch_params[0]]["exp_avg"] / P[0],
                          rtol=1e-10, atol=0)
    assert torch.allclose(step / options["lr"], u[0], rtol=1e-10, atol=0)
