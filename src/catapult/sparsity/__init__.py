"""Sparsity: static random masks (:mod:`~catapult.sparsity.static`, SμPar's setting) and masks
that change during training (:mod:`~catapult.sparsity.dynamic`: RigL, gradual magnitude
pruning; SμPar Fig. 12)."""
from catapult.sparsity.static import (MASK_METHODS, MaskedLinear, exact_nonzeros, kept_density, masked_modules,
                                      model_density, random_mask, sparsify_)
from catapult.sparsity.dynamic import (DYNAMIC_METHODS, MaskUpdater, gmp_density, prune_to, reset_state_,
                                       rigl_drop_fraction, rigl_update)

__all__ = ["MASK_METHODS", "random_mask", "exact_nonzeros", "kept_density", "MaskedLinear", "sparsify_", "masked_modules",
           "model_density", "DYNAMIC_METHODS", "MaskUpdater", "rigl_drop_fraction", "gmp_density", "rigl_update",
           "prune_to", "reset_state_"]
