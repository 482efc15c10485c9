import catapult


def test_public_names_exist():
    for name in ["sharpness", "preconditioned_sharpness", "instability_threshold", "critical_lr",
                 "param_groups", "parametrize", "optim", "schedules", "models", "data"]:
        assert hasattr(catapult, name), name
