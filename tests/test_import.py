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

    # ... nor at a RigL step (dense gradients captured), where the lazy form wrapped at the first
    # call: it imported them there, and made inductor's cache folder in the temp directory
    probe = ("import sys, tempfile, pathlib, torch, catapult, catapult.cli\n"
             "tempfile.tempdir = tempfile.mkdtemp()\n"
             "layer = catapult.sparsity.MaskedLinear(6, 4, density=0.5)\n"
             "layer.capture_dense_grad = True\n"
             "layer(torch.ones(2, 6)).sum().backward()\n"
             "assert layer.dense_grad is not None\n"
             "print(sorted(m for m in ('torch._dynamo', 'torch._inductor', 'sympy') if m in sys.modules),\n"
             "      sorted(p.name for p in pathlib.Path(tempfile.tempdir).iterdir()))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[] []", out.stdout
