"""Sweeps: grids over config keys, executors (local, ensemble, ray)."""
