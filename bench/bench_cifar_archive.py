"""Reading CIFAR-10 straight from its ``.tar.gz``: wall time and how often gzip starts again.

Writes a synthetic ``cifar-10-python.tar.gz`` (the official layout and member order: data_batch_4
first, data_batch_1 last; 50,000 + 10,000 images of blocky pixels that deflate codes; protocol-4
pickles, whose bytes are raw as in the official protocol-2 files) into a temporary folder, then times ``catapult.data.load_cifar10`` on it, whole and with n_train=5000 /
n_test=1000, counting gzip's rewinds (each one decompresses the stream again from its start). One
plain pass of ``zlib`` over the file is the floor. Nothing is written outside the temporary folder.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_cifar_archive.py
"""
from __future__ import annotations

import argparse
import gzip
import io
import pickle
import tarfile
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

# the member order of the official archive: reading the batches in name order walks it back and forth
ORDER = ["data_batch_4", "readme.html", "test_batch", "data_batch_3", "batches.meta", "data_batch_2",
         "data_batch_5", "data_batch_1"]


def images(rng: np.random.Generator, n: int) -> np.ndarray:
    """Blocky pixels with noise, so deflate codes them (as it does photos) rather than storing them."""
    base = rng.integers(0, 256, size=(n, 3, 8, 8), dtype=np.uint8)
    pixels = np.repeat(np.repeat(base, 4, 2), 4, 3).astype(np.int16) + rng.integers(-6, 7, size=(n, 3, 32, 32))
    return np.clip(pixels, 0, 255).astype(np.uint8).reshape(n, 3072)


def write_archive(path: Path, per_batch: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    with tarfile.open(path, "w:gz", compresslevel=6) as tar:
        for name in ORDER:
            if name == "readme.html":
                raw = b"<html>readme</html>"
            elif name == "batches.meta":
                raw = pickle.dumps({b"label_names": [f"c{k}".encode() for k in range(10)], b"num_vis": 3072},
                                   protocol=4)
            else:
                raw = pickle.dumps({b"data": images(rng, per_batch), b"labels": rng.integers(0, 10, per_batch).tolist(),
                                    b"batch_label": name.encode()}, protocol=4)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-batch", type=int, default=10000, help="images per batch file (official: 10000)")
    args = parser.parse_args()
    from catapult.data import load_cifar10

    rewinds = [0]
    rewind = gzip._GzipReader._rewind

    def counted(self):
        rewinds[0] += 1
        return rewind(self)

    gzip._GzipReader._rewind = counted
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "cifar-10-python.tar.gz"
        write_archive(path, args.per_batch)
        print(f"archive: {path.stat().st_size / 1e6:.0f} MB, {args.per_batch} images a batch")
        start = time.perf_counter()
        with open(path, "rb") as f:
            inflate, size = zlib.decompressobj(31), 0
            while chunk := f.read(1 << 20):
                size += len(inflate.decompress(chunk))
        print(f"one zlib pass (the floor): {size / 1e6:.0f} MB in {time.perf_counter() - start:.2f} s")
        for subset in ({}, {"n_train": args.per_batch // 2, "n_test": args.per_batch // 10}):
            rewinds[0] = 0
            start = time.perf_counter()
            data = load_cifar10(str(path), **subset)
            print(f"load_cifar10 {subset or 'whole'}: {data.n_train} train images, "
                  f"{time.perf_counter() - start:.2f} s, gzip rewinds {rewinds[0]}")


if __name__ == "__main__":
    main()
