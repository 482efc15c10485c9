"""The ``ray`` executor: chunks of cells as Ray tasks, on a local instance or a cluster.

Each task runs ``chunk_size`` cells one after another (:func:`run_cell`, so one failing cell
does not take its chunk down) and returns their results; the driver waits on all tasks with
``ray.wait`` and yields each chunk's results the moment it lands, so the store (written by the
driver alone) fills up as the sweep progresses.

Lost workers: a task whose worker process or node dies is retried by Ray (``max_retries``
system-failure retries); if Ray gives up, the driver submits the chunk again (``resubmits``
times) before recording its cells as ``failed``. Either way a cell interrupted mid-run is
redone from scratch, never half-recorded.

Ray is optional: ``pip install 'catapult[ray]'``. With ``address=None`` a private local
instance is started (bound to 127.0.0.1, no dashboard) and shut down by :meth:`close`;
with an address (``"ray://host:10001"``, ``"host:6379"`` or ``"auto"``) the cluster must have
catapult installed on every node (or pass ``init_kwargs={"runtime_env": ...}``).
"""
from __future__ import annotations

import socket
from typing import Any, Iterable, Iterator, Sequence

from catapult.arguments import check_integer, check_real
from catapult.sweep.executors import Cell, CellResult, Executor, RunFn, check_threads, run_cell

__all__ = ["RayExecutor", "import_ray", "ray_address_endpoint", "ray_address_problem"]

#: Seconds :func:`ray_address_problem` waits for the cluster's port to answer.
CONNECT_TIMEOUT_S = 5.0


def ray_address_endpoint(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of a cluster address (``"ray://host:10001"`` or ``"host:6379"``),
    ``None`` for ``"auto"`` / ``"local"`` (Ray finds those itself); a ValueError for anything
    else.

    >>> ray_address_endpoint("ray://head:10001"), ray_address_endpoint("10.0.0.2:6379")
    (('head', 10001), ('10.0.0.2', 6379))
    >>> ray_address_endpoint("auto") is None
    True
    >>> ray_address_endpoint("head")
    Traceback (most recent call last):
        ...
    ValueError: 'head' is not auto, local, host:port or ray://host:port
    """
    if address in ("auto", "local"):
        return None
    rest = address[len("ray://"):] if address.startswith("ray://") else address
    host, _, port = rest.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536 or "/" in rest:
        raise ValueError(f"{address!r} is not auto, local, host:port or ray://host:port")
    return host.strip("[]"), int(port)


def _shown_address(address) -> str:
    """A cluster address as the start line shows it: ``host:port`` (``ray://`` kept, an IPv6 host
    in brackets) as :func:`ray_address_endpoint` reads it, ``auto`` / ``local``; anything else
    (a Python caller's address, not checked) quoted with ``repr``: one line whatever it holds.
    It was printed as given (a trailing newline or space, ``ray://`` hosts in two spellings)."""
    try:
        endpoint = ray_address_endpoint(address)
    except (ValueError, TypeError, AttributeError):
        return repr(address)
    if any(c.isspace() or not c.isprintable() for c in address):
        return repr(address)
    if endpoint is None:
        return address
    host, port = endpoint
    return f"{'ray://' if address.startswith('ray://') else ''}{f'[{host}]' if ':' in host else host}:{port}"


def ray_address_problem(address: str, timeout: float = CONNECT_TIMEOUT_S) -> str | None:
    """What is wrong with a cluster address, found before any work, or ``None``: its form
    (:func:`ray_address_endpoint`), or that nothing answers on its port within ``timeout``
    seconds (``ray.init`` itself retries such an address for minutes, and only once the sweep's
    store is written and its cells are claimed). One TCP connection, closed at once."""
    try:
        endpoint = ray_address_endpoint(address)
    except ValueError as err:
        return str(err)
    if endpoint is None:
        return None
    try:
        with socket.create_connection(endpoint, timeout=timeout):
            return None
    except OSError as err:
        return f"cannot reach {endpoint[0]}:{endpoint[1]} ({err.strerror or err})"


def import_ray():
    """``import ray`` with a clear message when the optional dependency is missing."""
    try:
        import ray
    except ImportError:
        raise ImportError("the ray executor needs Ray, an optional dependency: "
                          "pip install 'catapult[ray]'") from None
    return ray


def _run_chunk(run_fn: RunFn, cells: Sequence[Cell], threads: int | None) -> list[tuple[int, CellResult]]:
    """Body of one Ray task: the chunk's cells in order, each failure caught and recorded."""
    return [(cell.id, run_cell(run_fn, cell, threads)) for cell in cells]


def _check_counts(**counts: tuple) -> dict[str, int | None]:
    """The RayExecutor options as ints, through :func:`~catapult.arguments.check_integer` (each an
    integer >= its low end; ``num_cpus`` may be None): ``chunk_size=1.5`` ran chunks of ``int(1.5)`` = 1
    cell, ``resubmits=-1`` never resubmitted, ``max_retries=2.5`` was 2 (-1 is Ray's "retry forever")."""
    return {name: check_integer("RayExecutor", name, value, low=low, optional=name == "num_cpus")
            for name, (value, low) in counts.items()}


class RayExecutor(Executor):
    """Cells as Ray tasks (``chunk_size`` cells per task).

    Options: ``address`` (``None`` = start a local instance), ``num_cpus`` (of a local
    instance; default all), ``chunk_size`` (cells per task, default 1), ``cpus_per_task`` /
    ``gpus_per_task`` (resources each task asks for), ``max_retries`` (Ray's retries of a task
    whose worker died), ``resubmits`` (driver-side resubmissions after Ray gives up),
    ``threads`` (torch threads per task; Ray's default is one per CPU the task asks for),
    ``init_kwargs`` (more ``ray.init`` arguments).
    """

    name = "ray"

    def __init__(self, run_fn: RunFn | None = None, *, address: str | None = None, num_cpus: int | None = None,
                 chunk_size: int = 1, cpus_per_task: float = 1, gpus_per_task: float = 0,
                 max_retries: int = 3, resubmits: int = 1, threads: int | None = None,
                 init_kwargs: dict | None = None):
        super().__init__(run_fn)
        counts = _check_counts(chunk_size=(chunk_size, 1), max_retries=(max_retries, -1), resubmits=(resubmits, 0),
                               num_cpus=(num_cpus, 1))
        for name, value, positive in (("cpus_per_task", cpus_per_task, True), ("gpus_per_task", gpus_per_task, False)):
            check_real("RayExecutor", name, value, low=0.0, low_open=positive)
        threads = check_threads("RayExecutor", threads)
        self.ray = import_ray()
        self.address = address
        self.runs_here = address is None  # a cluster's machines may hold more than this one
        self.num_cpus = counts["num_cpus"]
        self.chunk_size = counts["chunk_size"]
        self.cpus_per_task = cpus_per_task
        self.gpus_per_task = gpus_per_task
        self.max_retries = counts["max_retries"]
        self.resubmits = counts["resubmits"]
        self.threads = threads
        self.init_kwargs = dict(init_kwargs or {})
        self._owns_ray = False

    def describe(self) -> str:
        """The Ray instance the cells will run on (a local one, or a cluster's address) and the
        size of its tasks; what it holds is known once Ray has started (:meth:`run` says it then)."""
        where = (f"a local Ray instance on {'all' if self.num_cpus is None else self.num_cpus} CPUs"
                 if self.address is None else f"the Ray cluster at {_shown_address(self.address)}")
        cells = f"{self.chunk_size} cell{'s' if self.chunk_size > 1 else ''}"
        cpus = f"{self.cpus_per_task:g} CPU{'' if self.cpus_per_task == 1 else 's'}"
        return f"the ray executor ({where}; {cells} and {cpus} a task)"

    def _ensure_ray(self) -> None:
        ray = self.ray
        if ray.is_initialized():
            return
        kwargs: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
        if self.address is None:
            kwargs.update(num_cpus=self.num_cpus, _node_ip_address="127.0.0.1")
        else:
            kwargs.update(address=self.address)
        kwargs.update(self.init_kwargs)
        ray.init(**kwargs)
        self._owns_ray = True

    def run(self, cells: Iterable[Cell]) -> Iterator[tuple[int, CellResult]]:
        ray = self.ray
        cells = list(cells)
        if not cells:
            return
        self.say(f"starting Ray for {len(cells)} cell{'s' if len(cells) > 1 else ''}"
                 if not ray.is_initialized() else f"submitting {len(cells)} cell{'s' if len(cells) > 1 else ''} to Ray")
        self._ensure_ray()
        task = ray.remote(_run_chunk).options(
            max_retries=self.max_retries, retry_exceptions=False,
            num_cpus=self.cpus_per_task, num_gpus=self.gpus_per_task,
        )
        run_fn_ref = ray.put(self.run_fn)
        chunks = [cells[i:i + self.chunk_size] for i in range(0, len(cells), self.chunk_size)]
        pending: dict[Any, tuple[list[Cell], int]] = {}
        for chunk in chunks:
            pending[task.remote(run_fn_ref, chunk, self.threads)] = (chunk, 0)
        cpus = float(ray.cluster_resources().get("CPU", 0.0))
        at_once = min(len(chunks), int(cpus // self.cpus_per_task))
        self.say(f"ray: {len(chunks)} task{'s' if len(chunks) > 1 else ''} submitted to {cpus:g} CPUs, "
                 f"up to {at_once} running at once; results come as each task finishes")
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                chunk, resubmitted = pending.pop(ref)
                try:
                    results = ray.get(ref)
                except ray.exceptions.RayTaskError as err:
                    # the task body itself raised (e.g. run_fn could not be unpickled there)
                    for cell in chunk:
                        yield cell.id, CellResult("failed", [], {}, error=f"Ray task error: {err}")
                    continue
                except ray.exceptions.RayError as err:
                    # worker or node lost and Ray's own retries used up: submit again
                    if resubmitted < self.resubmits:
                        pending[task.remote(run_fn_ref, chunk, self.threads)] = (chunk, resubmitted + 1)
                        continue
                    for cell in chunk:
                        yield cell.id, CellResult("failed", [], {}, error=f"worker lost: {type(err).__name__}: {err}")
                    continue
                yield from results

    def close(self) -> None:
        if self._owns_ray and self.ray.is_initialized():
            self.ray.shutdown()
        self._owns_ray = False
