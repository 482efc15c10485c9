"""The ranks' set-up verdicts travel as JSON bytes, never as a pickle, on the default group too
(``engine.gather_json``). Before, where gloo was not built in (``setup_group`` yields no group),
``on_every_rank`` gathered them with ``dist.all_gather_object``, which pickles on one rank and
unpickles on the others. Truth: 2 gloo ranks whose pickling is made to raise (``pickle``'s
functions and classes, and the ones torch's object collectives bound at import), the values JSON
gives back, and a scan of src/ for the collectives that pickle."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from gloo_ranks import on_ranks

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built in")
SRC = Path(__file__).resolve().parents[1] / "src" / "catapult"
#: torch's collectives that pickle their objects
PICKLING = {"all_gather_object", "gather_object", "broadcast_object_list", "scatter_object_list",
            "send_object_list", "recv_object_list"}


def _no_pickle(monkeypatch):
    import pickle

    import torch.distributed as dist
    import torch.distributed.distributed_c10d as c10d

    def refused(*args, **kwargs):
        raise AssertionError("pickled")

    for name in ("dumps", "loads", "dump", "load", "Pickler", "Unpickler"):
        monkeypatch.setattr(pickle, name, refused)
    for name in ("_pickler", "_unpickler"):   # what torch's object collectives pickle with
        if hasattr(c10d, name):
            monkeypatch.setattr(c10d, name, refused)
    for name in PICKLING:
        if hasattr(dist, name):
            monkeypatch.setattr(dist, name, refused)


def _without_gloo_group(rank, world):
    from pathlib import PurePosixPath

    import torch.distributed as dist

    from catapult.config import ConfigError
    from catapult.engine import every_rank
    from catapult.engine.gather_json import gather_json

    with pytest.MonkeyPatch.context() as monkeypatch:
        _no_pickle(monkeypatch)
        monkeypatch.setattr(dist, "is_gloo_available", lambda: False)   # no set-up group: the default one
        gathered = gather_json({"rank": rank, "pair": (rank, "x"), "path": PurePosixPath(f"/d/{rank}")})
        done = every_rank.on_every_rank(lambda: f"done {rank}", True)

        def work():
            if rank == 1:
                raise ConfigError([("data.root", "no shards at /data")])
            return "fine"
        try:
            every_rank.on_every_rank(work, True)
            failed = None
        except ConfigError as exc:
            failed = [list(p) for p in exc.problems]
    return {"gathered": gathered, "done": done, "failed": failed}


def test_the_default_groups_verdicts_travel_as_json_without_pickle():
    for rank, got in enumerate(on_ranks(_without_gloo_group)):
        assert got["gathered"] == [{"rank": r, "pair": [r, "x"], "path": f"PurePosixPath('/d/{r}')"} for r in range(2)]
        assert got["done"] == f"done {rank}"
        assert got["failed"] == [["data.root", "no shards at /data"]]   # rank 1's error, on both ranks


def test_no_source_file_calls_a_collective_that_pickles_or_an_unrestricted_torch_load():
    found, paths = [], sorted(SRC.rglob("*.py"))
    assert len(paths) > 100 and SRC / "engine" / "gather_json.py" in paths   # a scan of no files finds nothing
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if name in PICKLING:
                found.append(f"{path.relative_to(SRC)}:{node.lineno} {name}")
            if name == "load" and isinstance(node.func, ast.Attribute) and getattr(node.func.value, "id", "") == "torch":
                weights_only = [k.value for k in node.keywords if k.arg == "weights_only"]
                if not (weights_only and isinstance(weights_only[0], ast.Constant) and weights_only[0].value is True):
                    found.append(f"{path.relative_to(SRC)}:{node.lineno} torch.load without weights_only=True")
    assert found == []


@pytest.mark.parametrize("backend", ["gloo", "mpi", "cpu:gloo,cuda:nccl", "cpu:mpi,cuda:nccl", "undefined"])
def test_a_group_whose_backend_holds_gloo_or_mpi_gathers_on_the_cpu(monkeypatch, backend):
    # (mutation pass 18, GJ1) a backend string naming gloo or MPI for the CPU (alone, or beside NCCL for
    # CUDA) takes CPU tensors; only a group without either gathers on the CUDA device
    from catapult.engine import gather_json as module
    monkeypatch.setattr(module.dist, "get_backend", lambda group=None: backend)
    assert module.collective_device() == torch.device("cpu")


def test_a_value_json_cannot_encode_as_a_whole_travels_as_its_repr():
    # (mutation pass 18, GJ4) a cycle is json's ValueError ('Circular reference detected'), a key that is
    # not a string its TypeError: both come back as the whole's repr (a raise there ends that rank alone)
    from catapult.curvature.distributed import single_process_group
    from catapult.engine.gather_json import gather_json
    cycle = ["verdict"]
    cycle.append(cycle)
    with single_process_group():
        assert gather_json(cycle) == [repr(cycle)]
        assert gather_json({(1, 2): "x"}) == [repr({(1, 2): "x"})]


class _NoRepr:
    """A value whose repr raises (JSON's fallback for a value it cannot encode is the repr)."""

    def __repr__(self):
        raise RuntimeError("no repr here")


class _NoMessage(Exception):
    """An exception whose str raises."""

    def __str__(self):
        raise RuntimeError("no message here")


def _one_rank_cannot_encode(rank, world):
    from catapult.engine import every_rank
    from catapult.engine.gather_json import gather_json

    seen = {}
    try:
        seen["gather"] = gather_json({"rank": rank, "odd": _NoRepr() if rank == 1 else None})
    except RuntimeError as exc:
        seen["gather"] = ["raised", str(exc)]
    seen["after"] = gather_json(rank)   # the group is still in step: the next collective pairs up

    def work():
        if rank == 1:
            raise _NoMessage()
        return "fine"
    try:
        seen["verdict"] = every_rank.on_every_rank(work, True)
    except Exception as exc:   # noqa: BLE001 - the kind is checked
        seen["verdict"] = [type(exc).__name__, None if isinstance(exc, _NoMessage) else str(exc)]
    return seen


def test_an_object_one_rank_cannot_encode_raises_the_same_error_on_every_rank():
    """Rank 1's value has a repr that raises: gather_json raised there alone and rank 0 waited in its
    all_gather until the group's timeout (a hang: the set-up group's is 24 hours), and so did a set-up
    step's failure whose ``str`` raises. Now both ranks run the collectives and raise rank 1's error.
    The group's timeout (30 s) turns a hang into a failure."""
    got = on_ranks(_one_rank_cannot_encode, timeout_s=30.0)
    for rank in range(2):
        assert got[rank]["gather"] == ["raised", "gather_json: rank 1's object could not be encoded (RuntimeError: "
                                                 "no repr here); every rank of the group raises this"]
        assert got[rank]["after"] == [0, 1]
        # rank 1 raises its own _NoMessage; rank 0 a RuntimeError naming the kind and rank 1's stand-in message
        assert got[rank]["verdict"][0] == ("_NoMessage" if rank == 1 else "RuntimeError")
    assert got[0]["verdict"][1] == "rank 1: _NoMessage: (its message raised RuntimeError)"


def test_a_key_error_reaches_the_other_ranks_quoted_once():
    """A KeyError's message is its key's repr (``'x'``); the other ranks' copy was ``KeyError("'x'")``,
    printed ``"'x'"``. Truth: the failing rank's own ``str``."""
    from catapult.curvature.rank_errors import same_error
    for key in ("data.root", 3, ("a", 1), object()):
        original = KeyError(key)
        copy = same_error(1, "KeyError", str(original), None)
        assert isinstance(copy, KeyError) and str(copy) == str(original)
        if type(key) is not object:   # a literal key comes back as itself
            assert copy.args == (key,)


def test_kept_receives_the_collectives_tensors():
    # (mutation pass 19's GJ8, of pass 18) kept holds the size, the gathered sizes, the padded bytes and
    # the gathered bytes (on torch < 2.8 their last reference must not go inside the gloo group's free;
    # GJ8 kept none)
    from catapult.curvature.distributed import single_process_group
    from catapult.engine.gather_json import gather_json

    kept = []
    with single_process_group():
        assert gather_json({"a": [1, 2]}, kept=kept) == [{"a": [1, 2]}]
    assert len(kept) == 4 and all(torch.is_tensor(t) for t in kept)
    assert bytes(kept[3][:int(kept[1])].tolist()).decode() == 'V{"a": [1, 2]}'   # (a tag byte, then the JSON)
