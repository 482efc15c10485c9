"""Probe: distributed sharpness on 2 gloo ranks over loopback, double backprop and finite
differences, median wall time of 3 calls after a warm-up (tanh MLP 64-256-256-10, 512 samples
split over the ranks). Prints ``LABEL {hvp: (seconds, products)}``; run it on two versions of
the code (one with its src/ first on PYTHONPATH) to compare.

Usage:  .venv/bin/python bench/probe_distributed_agreement.py LABEL
"""
import os, sys, time, statistics
import torch, torch.distributed as dist, torch.multiprocessing as mp

def body(rank, world, port, out):
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    import catapult
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.Tanh(), torch.nn.Linear(256, 256), torch.nn.Tanh(), torch.nn.Linear(256, 10))
    x, y = torch.randn(512, 64), torch.randn(512, 10)
    shard = (x[rank::2], y[rank::2])
    res = {}
    for hvp in ("double_backprop", "finite_difference"):
        times = []
        for rep in range(4):
            dist.barrier(); t = time.perf_counter()
            est = catapult.sharpness(model, torch.nn.MSELoss(), shard, hvp=hvp, tol=1e-3, distributed=True, seed=rep)
            times.append(time.perf_counter() - t)
        res[hvp] = (statistics.median(times[1:]), est.matvecs)
    if rank == 0:
        print(out, res, flush=True)
    dist.barrier(); dist.destroy_process_group()
    # the results are out and nothing is left to clean up: skip the interpreter's teardown, where
    # a native gloo thread sometimes met it ("terminate called without an active exception",
    # 1 run in 4); tests/gloo_ranks.py ends its ranks the same way
    sys.stdout.flush()
    os._exit(0)

if __name__ == "__main__":
    import argparse
    import socket

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("label", help="printed before the timings (e.g. old / new)")
    label = parser.parse_args().label
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(body, args=(2, port, label), nprocs=2)
