"""More than one process: the torchrun world and the worker pool.

* **The world.** Under ``torchrun --nproc-per-node N [--nnodes M ...] -m harness.cli ...``
  every process (rank) runs the same command. :func:`joined` makes them one gloo group (CPU
  or GPU: only small Python objects cross it); work is split by rank with :func:`shard`
  and :func:`distribute`; rank 0 alone writes the shared outputs. Outside torchrun the
  world is one process and every collective is a no-op.
* **The worker pool** (``--workers``): CPU-bound per-image work (decoding, dlib detection
  and landmarks, alignment, classical swaps, PNG encoding) runs in ``N`` processes through
  :func:`pool_map`. Each task is a pure function of its item, results come back in item
  order, so nothing depends on the number of workers. Workers load their models once
  (the models' own per-process caches) and use one thread each.
* **Same numbers at any scale.** BLAS and oneDNN results depend on the thread count and on
  the batch shape. Inside :func:`single_threaded` (the whole of ``harness run``) every
  library uses one thread, and :func:`fixed_batches` runs networks on batches of one fixed
  size, so a face's features are the same whichever process computed them, with whatever
  other faces.

Example (no torchrun: one process, two workers):
    >>> from faceeval.parallel import worker_pool, pool_map
    >>> with worker_pool(2):  # doctest: +SKIP
    ...     pool_map(abs, [-1, -2, 3])
    [1, 2, 3]
"""

from __future__ import annotations

import datetime as _dt
import math
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from faceeval import timing
from faceeval.errors import HarnessError

T = TypeVar("T")
R = TypeVar("R")

#: rows per network forward: features never depend on which other faces share a batch
FEATURE_BATCH = {"cpu": 8, "cuda": 32}
#: how long a rank waits for the others at a collective (the slowest rank's share of a method)
TIMEOUT_ENV = "HARNESS_DIST_TIMEOUT_MIN"
DEFAULT_TIMEOUT_MIN = 24 * 60


# ---------------------------------------------------------------------------------------
# The world: ranks under torchrun
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class World:
    """Where this process stands among the ranks of one command (torchrun's variables)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def multi_node(self) -> bool:
        """The ranks span several machines (then they share --out over a network filesystem)."""
        return self.size > self.local_size

    @staticmethod
    def from_env() -> World:
        def num(name: str, default: int) -> int:
            value = os.environ.get(name, "")
            return int(value) if value.isdigit() else default

        size = num("WORLD_SIZE", 1)
        return World(num("RANK", 0), size, num("LOCAL_RANK", 0), num("LOCAL_WORLD_SIZE", size))


_world = World()


def world() -> World:
    """This process's world (one process unless inside :func:`joined`)."""
    return _world


def rank_device(device: str, w: World) -> str:
    """One GPU per rank: ``cuda`` becomes ``cuda:<local rank>``; other names are kept."""
    return f"cuda:{w.local_rank}" if device == "cuda" and w.size > 1 else device


@contextmanager
def joined() -> Iterator[World]:
    """Join the torchrun process group for the block (gloo; a no-op outside torchrun, or
    when the group exists already). Yields this process's :class:`World`."""
    global _world
    w = World.from_env()
    if w.size == 1:
        yield _world
        return
    import torch.distributed as dist

    created = not dist.is_initialized()
    if created:
        minutes = float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_MIN))
        dist.init_process_group("gloo", timeout=_dt.timedelta(minutes=minutes))
    previous, _world = _world, w
    finished = False
    try:
        yield w
        finished = True
    finally:
        _world = previous
        if created and dist.is_initialized():
            if finished:
                # every rank leaves together: a rank that tore the group down while its peer
                # was still finishing the last broadcast was seen to abort at exit (SIGABRT,
                # "terminate called without an active exception"); after an error the peers
                # may never arrive, so the group is only torn down
                dist.barrier()
            dist.destroy_process_group()


def all_gather(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (``[obj]`` in one process). Also a barrier."""
    if _world.size == 1:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * _world.size
    dist.all_gather_object(out, obj)
    return out


def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if _world.size == 1:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    all_gather(None)


def shard(items: Sequence[T], w: World | None = None) -> list[T]:
    """This rank's share of ``items``: every ``size``-th item from position ``rank``."""
    w = w or _world
    return list(items[w.rank :: w.size])


def shard_batches(items: Sequence[T], batch_size: int, w: World | None = None) -> list[T]:
    """This rank's share of ``items`` cut into batches of ``batch_size``: batch ``k`` goes to
    rank ``k mod size``, so each batch holds exactly the items of the one-process run's."""
    w = w or _world
    out: list[T] = []
    for k, start in enumerate(range(0, len(items), batch_size)):
        if k % w.size == w.rank:
            out.extend(items[start : start + batch_size])
    return out


def distribute(fn: Callable[[T], R], items: Sequence[T], on_result: Callable[[T, R], None] | None = None,
               light: bool = False) -> list[R]:
    """``fn(item)`` for every item: this rank computes items ``rank, rank + size, ...`` in
    its worker pool, then every rank gets every result, in item order. ``on_result`` sees
    this rank's results as they arrive (progress, resumable indexes). ``light``: cheap work
    (e.g. every item is cached) that does not start the pool (:func:`map_chunks`)."""
    mine = list(range(_world.rank, len(items), _world.size))
    results = pool_map(fn, [items[i] for i in mine], on_result=on_result, light=light)
    if _world.size == 1:
        return results
    out: list[Any] = [None] * len(items)
    for part in all_gather(list(zip(mine, results))):
        for i, r in part:
            out[i] = r
    return out


# ---------------------------------------------------------------------------------------
# The worker pool
# ---------------------------------------------------------------------------------------

#: the environment variables that size OpenMP's and the BLAS libraries' thread pools (read when
#: a library loads, so they must be set before torch or numpy is imported)
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")

_pool: ProcessPoolExecutor | None = None  # the running pool (started by the first task that needs it)
_pool_size = 1  # workers of the active worker_pool() block (1: none, or no block)
_in_worker = False
_launched: list = []  # the pool's worker processes (their Popen objects), to name a dead one and end them all


def available_cores() -> int:
    """CPU cores this process may use: its affinity mask (not the machine's count), capped by
    the container's CPU quota (``docker --cpus 2`` on a 64-core host: 2, as the quota throttles
    any more threads than that)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    return max(1, min(cores, quota)) if quota else cores


def cgroup_cpu_quota(root: str | os.PathLike = "/sys/fs/cgroup") -> int | None:
    """CPUs a cgroup quota allows, rounded up (cgroup v2 ``cpu.max``, v1 ``cpu/cpu.cfs_quota_us``
    over ``cpu.cfs_period_us``, as a container sees its own at the root); None without a quota."""
    from pathlib import Path

    base = Path(root)
    try:
        if (base / "cpu.max").is_file():
            quota, period = (base / "cpu.max").read_text().split()[:2]
        else:
            quota = (base / "cpu" / "cpu.cfs_quota_us").read_text().strip()
            period = (base / "cpu" / "cpu.cfs_period_us").read_text().strip()
        if quota in ("max", "-1"):
            return None
        return max(1, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):  # no cgroup file system (not Linux), or a format not known
        return None


def default_workers(w: World | None = None) -> int:
    """``--workers`` default: the cores available, divided among this machine's ranks."""
    w = w or World.from_env()
    return max(1, available_cores() // max(1, w.local_size))


def _init_worker() -> None:
    """One thread per library in a worker (the processes are the parallelism); Ctrl-C is
    the main process's to handle."""
    import signal

    global _in_worker
    _in_worker = True
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for var in THREAD_ENV_VARS:
        os.environ[var] = "1"
    _limit_threads()


def _limit_threads() -> dict[str, Any]:
    """Set torch, OpenCV, BLAS and OpenMP to one thread; returns the previous settings."""
    import cv2
    import torch
    from threadpoolctl import threadpool_limits  # after torch: its OpenMP is loaded by then

    before: dict[str, Any] = {"torch": torch.get_num_threads(), "cv2": cv2.getNumThreads()}
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    before["blas"] = threadpool_limits(limits=1)
    return before


@contextmanager
def environ(values: dict[str, str]) -> Iterator[None]:
    """Environment variables set for the block, then restored (or unset if they were unset)."""
    saved = {var: os.environ.get(var) for var in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for var, value in saved.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value


@contextmanager
def single_threaded() -> Iterator[None]:
    """Every library computes with one thread inside the block (then the numbers do not
    depend on the thread count); the worker pool and the ranks provide the parallelism.

    When torch is not imported yet it is not imported here (a fully cached run never needs
    it): the thread variables are set to 1 for the block, so torch, if something imports
    it inside, starts with one thread; after the block it gets the cores available."""
    import sys

    if "torch" in sys.modules:
        before = _limit_threads()
        try:
            yield
        finally:
            import cv2
            import torch

            before["blas"].restore_original_limits()
            torch.set_num_threads(before["torch"])
            cv2.setNumThreads(before["cv2"])
        return
    import cv2
    from threadpoolctl import threadpool_limits

    with environ({var: "1" for var in THREAD_ENV_VARS}):
        cv2_threads = cv2.getNumThreads()
        cv2.setNumThreads(1)
        blas = threadpool_limits(limits=1)
        try:
            yield
        finally:
            blas.restore_original_limits()
            cv2.setNumThreads(cv2_threads)
    if "torch" in sys.modules:  # imported inside with one thread: the cores again
        sys.modules["torch"].set_num_threads(available_cores())


# The pool's processes start from a fork server of their own that never imports the caller's
# __main__: the standard forkserver/spawn contexts run the main script again in every worker
# (a script without `if __name__ == "__main__":` would start its evaluation again there) and
# cannot start at all from `python -` or `python -c`. Workers only ever run harness functions.
try:
    import io as _io
    from multiprocessing import context as _mp_context
    from multiprocessing import forkserver as _forkserver
    from multiprocessing import popen_forkserver as _popen_forkserver
    from multiprocessing import reduction as _reduction
    from multiprocessing import spawn as _spawn
    from multiprocessing import util as _mp_util

    _SERVER = _forkserver.ForkServer()
    _SERVER.set_forkserver_preload(["faceeval.parallel"])  # never "__main__"

    class _Popen(_popen_forkserver.Popen):
        """multiprocessing's forkserver Popen (3.11-3.13), with our server and without the
        main module in the data a new process prepares itself from."""

        def _launch(self, process_obj):
            prep_data = _spawn.get_preparation_data(process_obj._name)
            prep_data.pop("init_main_from_path", None)
            prep_data.pop("init_main_from_name", None)
            buf = _io.BytesIO()
            _mp_context.set_spawning_popen(self)
            try:
                _reduction.dump(prep_data, buf)
                _reduction.dump(process_obj, buf)
            finally:
                _mp_context.set_spawning_popen(None)
            self.sentinel, w = _SERVER.connect_to_new_process(self._fds)
            _parent_w = os.dup(w)
            self.finalizer = _mp_util.Finalize(self, _mp_util.close_fds, (_parent_w, self.sentinel))
            with open(w, "wb", closefd=True) as f:
                f.write(buf.getbuffer())
            self.pid = _forkserver.read_signed(self.sentinel)
            _launched.append(self)

    class _Process(_mp_context.ForkServerProcess):
        @staticmethod
        def _Popen(process_obj):
            return _Popen(process_obj)

    class _Context(_mp_context.ForkServerContext):
        Process = _Process

    def _context():
        return _Context()

    def _stop_server() -> None:
        _SERVER._stop()
except (ImportError, AttributeError):  # another Python's multiprocessing: the standard context
    def _context():
        import multiprocessing

        return multiprocessing.get_context("forkserver")

    def _stop_server() -> None:
        pass


@contextmanager
def worker_pool(workers: int) -> Iterator[int]:
    """Run heavy :func:`map_chunks`/:func:`pool_map` work in ``workers`` processes inside
    the block (1: in this process). The processes start with the first task that needs
    them: a run whose work is all cached starts none. Nested pools keep the outer one.
    On leaving the block every worker process has ended (after an error or Ctrl-C they
    are terminated, not awaited). Yields the number of workers."""
    global _pool, _pool_size
    if workers < 1:
        raise HarnessError(f"--workers must be at least 1, got {workers}")
    if _pool_size > 1 or _in_worker or workers == 1:
        yield _pool_size
        return
    _pool_size = workers
    ok = False
    try:
        yield workers
        ok = True
    finally:
        pool, _pool, _pool_size = _pool, None, 1
        if pool is not None:
            _end_pool(pool, wait=ok)


def _end_pool(pool: ProcessPoolExecutor, wait: bool) -> None:
    """Shut the pool down; ``wait``: let the workers finish (normal end), else terminate
    them (an error, a signal). Either way no worker process is left running."""
    procs = list(_launched)
    _launched.clear()
    try:
        pool.shutdown(wait=wait, cancel_futures=True)
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            if p.wait(5) is None:
                p.kill()
                p.wait(5)
        _stop_server()


def _get_pool() -> ProcessPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ProcessPoolExecutor(_pool_size, mp_context=_context(), initializer=_init_worker)
    return _pool


def pool_workers() -> int:
    """Workers of the active pool block (1 when there is none)."""
    return _pool_size


def _run_chunk(fn: Callable[[list], Sequence], chunk: list) -> tuple[list, dict[str, float]]:
    before = timing.snapshot()
    result = list(fn(chunk))
    if len(result) != len(chunk):
        raise RuntimeError(f"{fn} returned {len(result)} results for {len(chunk)} items")
    return result, timing.since(before)


class _Each:
    """Picklable ``chunk -> [fn(item) for item in chunk]``."""

    def __init__(self, fn: Callable) -> None:
        self.fn = fn

    def __call__(self, chunk: list) -> list:
        return [self.fn(item) for item in chunk]


def _task_name(fn: Callable) -> str:
    fn = fn.fn if isinstance(fn, _Each) else fn
    return getattr(fn, "__qualname__", None) or type(fn).__name__


def _death(fn: Callable) -> HarnessError:
    """The one-line error for a worker that died: which task, how, what to try."""
    import signal

    codes = [p.returncode for p in _launched if p.returncode not in (None, 0)]
    # the pool terminates the others (SIGTERM) once one died: name the first other cause
    cause = next((c for c in codes if c != -signal.SIGTERM), codes[0] if codes else None)
    if cause is None:
        how = "ended unexpectedly"
    elif cause < 0:
        name = signal.Signals(-cause).name if -cause in signal.Signals._value2member_map_ else str(-cause)
        how = f"was killed by {name}" + (" (the kernel's out-of-memory killer sends it)" if -cause == 9 else "")
    else:
        how = f"exited with code {cause}"
    return HarnessError(f"a worker process {how} while running {_task_name(fn)}; rerun with fewer --workers "
                        "(--workers 1 runs everything in this process): finished work is cached")


def map_chunks(fn: Callable[[list], Sequence], items: Sequence, on_result: Callable | None = None,
               multiple: int = 1, light: bool = False) -> list:
    """``fn`` over chunks of ``items`` (fn: list -> one result per item), in the pool when
    there is one; results flattened, in item order. ``fn`` must be picklable (a module-level
    function or a small object) and a pure function of each item. Chunks hold a multiple of
    ``multiple`` items (a network's fixed batch: no chunk pads a batch another could fill).
    ``light``: cheap work (decoding a crop) that uses the pool if it runs already but never
    starts it."""
    from faceeval import stops

    items = list(items)
    if _pool_size == 1 or len(items) <= 1 or (light and _pool is None):
        out = list(fn(items)) if items else []
        if on_result is not None:
            for item, r in zip(items, out):
                on_result(item, r)
        return out
    size = max(1, math.ceil(len(items) / (2 * _pool_size)))  # two chunks per worker: a slow one does not stall
    size = math.ceil(size / multiple) * multiple
    chunks = [items[i : i + size] for i in range(0, len(items), size)]
    out: list = []
    pool = _get_pool()
    with timing.stage("wait"):
        try:
            futures = [pool.submit(_run_chunk, fn, c) for c in chunks]
            for chunk, fut in zip(chunks, futures):
                stops.check()
                results, times = fut.result()
                timing.add(times)
                out.extend(results)
                if on_result is not None:
                    for item, r in zip(chunk, results):
                        on_result(item, r)
        except BrokenProcessPool:
            for p in _launched:
                p.wait(5)
            raise _death(fn) from None
    return out


def map_rows(fn: Callable[[list], Sequence], rows: Sequence, device: str) -> list:
    """A network's ``fn`` (rows -> one output per row) over ``rows``: in the worker pool on
    the CPU (each worker loads the network once), in this process on a GPU."""
    if str(device).startswith("cuda"):
        return list(fn(list(rows))) if len(rows) else []
    return map_chunks(fn, rows, multiple=feature_batch(device))


def pool_map(fn: Callable[[T], R], items: Sequence[T], on_result: Callable[[T, R], None] | None = None,
             light: bool = False) -> list[R]:
    """``[fn(item) for item in items]``, in the pool when there is one; ``on_result`` sees
    each (item, result) in item order as soon as it is there. ``light``: see :func:`map_chunks`."""
    if _pool_size == 1 or (light and _pool is None):
        out = []
        for item in items:
            out.append(fn(item))
            if on_result is not None:
                on_result(item, out[-1])
        return out
    return map_chunks(_Each(fn), items, on_result)


# ---------------------------------------------------------------------------------------
# Networks on fixed batches
# ---------------------------------------------------------------------------------------


def feature_batch(device: str) -> int:
    """Rows per forward on ``device`` (see :data:`FEATURE_BATCH`)."""
    return FEATURE_BATCH["cuda" if str(device).startswith("cuda") else "cpu"]


def fixed_batches(fn: Callable[[Any], Any], rows: Any, size: int) -> Any:
    """``fn`` over ``rows`` (a torch tensor or NumPy array, first axis = items) in batches of
    exactly ``size`` rows, the last one padded with zeros; the outputs (first axis = items)
    concatenated without the padding. A row's output then never depends on its neighbours
    or its position, only on itself (same kernels, same shapes, every time)."""
    import numpy as np

    if len(rows) == 0:
        return fn(rows)
    is_torch = not isinstance(rows, np.ndarray)
    if is_torch:
        import torch
    outs = []
    for start in range(0, len(rows), size):
        part = rows[start : start + size]
        short = size - len(part)
        if short and is_torch:
            part = torch.cat([part, part.new_zeros((short, *part.shape[1:]))])
        elif short:
            part = np.concatenate([part, np.zeros((short, *part.shape[1:]), part.dtype)])
        outs.append(fn(part)[: size - short])
    return torch.cat(outs) if is_torch else np.concatenate(outs)


def in_worker() -> bool:
    """True inside a pool worker (work there never starts another pool)."""
    return _in_worker

