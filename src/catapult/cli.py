"""The `catapult` command. (stub)"""
from __future__ import annotations


def main(argv=None) -> int:
    raise SystemExit("not implemented yet")
