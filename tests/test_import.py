import catapult


def test_public_names_exist():
    for name in ["sharpness", "preconditioned_sharpness", "instability_threshold", "critical_lr",
                 "param_groups", "parametrize", "optim", "schedules", "models", "data"]:
        assert hasattr(catapult, name), name


def test_importing_catapult_leaves_torch_compile_unloaded():
    # an eager ``torch.compiler.disable`` at class creation (MaskedLinear) imported torch._dynamo
    # and sympy on every ``import catapult``: 1.5 s of each CLI call, sweep worker and rank
    import subprocess
    import sys

    probe = ("import sys, catapult, catapult.cli\n"
             "print(sorted(m for m in ('torch._dynamo', 'torch._inductor', 'sympy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout
