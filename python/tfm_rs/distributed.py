"""Data-parallel training over MPI (Open MPI, or any MPI, through ``mpi4py``), Horovod-style.

The process group is ``MPI.COMM_WORLD`` of the ``mpirun`` that launched the processes; names
follow ``torch.distributed``: :func:`init`, :func:`is_initialized`, :func:`get_rank`,
:func:`get_world_size`, :func:`barrier`, :func:`all_reduce`, :func:`broadcast`. A process that
was not launched by an MPI launcher is a group of one (rank 0, world size 1) and needs neither
MPI nor ``mpi4py``; ``mpi4py`` is imported only when there are peers.

:class:`DistributedDataParallel` all-reduces gradients in **buckets** while the backward pass is
still running: every parameter gets a post-accumulate-grad hook (the Rust autograd engine calls
it once the parameter's gradient of that pass is complete), and a bucket's non-blocking
``Iallreduce`` starts as soon as all its gradients are in. :meth:`DistributedDataParallel.synchronize`
(after the last backward of a step) waits for them.

Failure: every wait on a peer has a deadline (:func:`init`'s ``timeout``, default
``TFM_RS_DIST_TIMEOUT`` or 600 s) after which it raises :class:`DistributedTimeoutError`; an
exception that escapes a rank's program aborts the whole job (``MPI_Abort``) from
``sys.excepthook`` instead of leaving the other ranks waiting, and :func:`abort` does the same
for a caller that catches the exception itself (the CLI). A rank that dies outright is noticed
by ``mpirun``, which ends the others. See ``docs/distributed.md``.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import time
from typing import Any, Dict, Iterator, List, Optional, Sequence

import numpy as np

from tfm_rs import _core

__all__ = ["DistributedError", "DistributedTimeoutError", "DistributedDataParallel", "ReduceOp",
           "ZeroRedundancyOptimizer", "abort", "all_reduce", "all_reduce_values", "barrier", "broadcast",
           "destroy_process_group", "dropout_seed", "get_rank", "get_world_size", "init", "is_available",
           "is_initialized", "launched_world_size"]

# Environment variables through which MPI launchers tell a process the job's size.
_SIZE_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MV2_COMM_WORLD_SIZE")
DEFAULT_TIMEOUT = 600.0


class DistributedError(_core.TfmError):
    """MPI is missing, a collective failed, or the processes disagree."""


class DistributedTimeoutError(DistributedError, TimeoutError):
    """A peer did not take part in a collective within the timeout (dead, hung or diverged)."""


class ReduceOp:
    """Reductions of :func:`all_reduce` (``torch.distributed.ReduceOp``'s names)."""

    SUM = "sum"
    MAX = "max"
    MIN = "min"
    AVG = "avg"


class _Group:
    def __init__(self) -> None:
        self.initialized = False
        self.comm: Any = None
        self.mpi: Any = None
        self.rank = 0
        self.world_size = 1
        self.timeout = DEFAULT_TIMEOUT


_group = _Group()


def is_available() -> bool:
    """Whether ``mpi4py`` can be imported (MPI itself is checked when :func:`init` needs it)."""
    import importlib.util

    return importlib.util.find_spec("mpi4py") is not None


def launched_world_size() -> int:
    """The job size an MPI launcher announced in the environment (1 when not launched by one)."""
    for var in _SIZE_VARS:
        value = os.environ.get(var)
        if value and value.isdigit():
            return int(value)
    return 1


def _import_mpi() -> Any:
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise DistributedError(
            f"distributed training needs MPI through mpi4py, which could not be imported ({e}); install an MPI "
            "(e.g. apt-get install openmpi-bin libopenmpi-dev) and then pip install mpi4py") from None
    return MPI


def init(timeout: Optional[float] = None) -> None:
    """Join the process group (``torch.distributed.init_process_group``); repeated calls are
    no-ops. Under an MPI launcher this imports ``mpi4py`` (a :class:`DistributedError` saying
    what to install when it is missing) and installs the abort-on-uncaught-exception hook;
    otherwise the group is this process alone. ``timeout``: seconds any wait on the peers may
    take before :class:`DistributedTimeoutError` (default ``TFM_RS_DIST_TIMEOUT`` or 600)."""
    g = _group
    if timeout is None:
        timeout = float(os.environ.get("TFM_RS_DIST_TIMEOUT", DEFAULT_TIMEOUT))
    if not timeout > 0:
        raise _core.InvalidArgumentError(f"distributed.init: timeout must be > 0 seconds, got {timeout}")
    g.timeout = float(timeout)
    if g.initialized:
        return
    if launched_world_size() > 1:
        MPI = _import_mpi()
        g.mpi, g.comm = MPI, MPI.COMM_WORLD
        g.rank, g.world_size = g.comm.Get_rank(), g.comm.Get_size()
        _install_excepthook()
    g.initialized = True


def is_initialized() -> bool:
    """Whether :func:`init` has run."""
    return _group.initialized


def _require() -> _Group:
    if not _group.initialized:
        raise DistributedError("the process group is not initialized: call tfm_rs.distributed.init() first")
    return _group


def get_rank() -> int:
    """This process's rank, 0 … world size − 1 (0 without a group)."""
    return _group.rank


def get_world_size() -> int:
    """The number of processes (1 without a group)."""
    return _group.world_size


def destroy_process_group() -> None:
    """Leave the group (MPI itself is finalized at exit by ``mpi4py``)."""
    _group.initialized = False
    _group.comm = _group.mpi = None
    _group.rank, _group.world_size = 0, 1


def _wait(requests: Sequence[Any], what: str) -> float:
    """Wait for MPI ``requests`` with the group's deadline; returns the seconds waited. Polls
    (rather than ``Waitall``) so that a dead or diverged peer ends in an error, not a hang."""
    g = _group
    t0 = time.perf_counter()
    if not requests:
        return 0.0
    Request = g.mpi.Request
    deadline = t0 + g.timeout
    pause = 0.0
    while not Request.Testall(list(requests)):
        now = time.perf_counter()
        if now > deadline:
            raise DistributedTimeoutError(
                f"rank {g.rank}: {what} did not complete within {g.timeout:g} s; another rank has died, hung or "
                "taken a different path (TFM_RS_DIST_TIMEOUT sets the limit)")
        time.sleep(pause)
        pause = min(1e-3, pause * 2 or 1e-5)
    return time.perf_counter() - t0


_OPS = (ReduceOp.SUM, ReduceOp.AVG, ReduceOp.MAX, ReduceOp.MIN)


def _mpi_op(op: str) -> Any:
    """The MPI reduction of ``op`` (AVG sums; the caller divides)."""
    if op not in _OPS:
        raise _core.InvalidArgumentError(f"all_reduce: op must be one of {', '.join(_OPS)}, got {op!r}")
    if _group.mpi is None:
        return None
    mpi = _group.mpi
    return {ReduceOp.SUM: mpi.SUM, ReduceOp.AVG: mpi.SUM, ReduceOp.MAX: mpi.MAX, ReduceOp.MIN: mpi.MIN}[op]


def all_reduce(array: Any, op: str = ReduceOp.SUM) -> Any:
    """Reduce ``array`` over all ranks, in place, and return it (``torch.distributed.all_reduce``).
    ``array``: a contiguous NumPy array (float32/float64/int64) or a :class:`tfm_rs.Tensor`;
    ``op``: a :class:`ReduceOp` name. Every rank must call it with the same shape and dtype."""
    g = _require()
    if isinstance(array, _core.Tensor):
        values = all_reduce(array.numpy(), op)
        with _no_grad():
            array.copy_(values)
        return array
    if not isinstance(array, np.ndarray) or not array.flags.c_contiguous:
        raise _core.InvalidArgumentError("all_reduce: expected a contiguous NumPy array or a tfm_rs.Tensor")
    mpi_op = _mpi_op(op)
    if g.world_size == 1:
        return array
    req = g.comm.Iallreduce(g.mpi.IN_PLACE, array, op=mpi_op)
    _wait([req], f"all_reduce of {array.size} values")
    if op == ReduceOp.AVG:
        array /= g.world_size
    return array


def all_reduce_values(values: Sequence[float], op: str = ReduceOp.SUM, dtype: Any = np.float64) -> List[Any]:
    """:func:`all_reduce` of a few numbers (counts, a loss, a time), as a list."""
    return all_reduce(np.array(values, dtype=dtype), op).tolist()


def broadcast(array: Any, src: int = 0) -> Any:
    """Overwrite ``array`` (NumPy, contiguous; or a Tensor) with rank ``src``'s, in place."""
    g = _require()
    if isinstance(array, _core.Tensor):
        values = broadcast(array.numpy(), src)
        with _no_grad():
            array.copy_(values)
        return array
    if g.world_size == 1:
        return array
    req = g.comm.Ibcast(array, root=src)
    _wait([req], f"broadcast of {array.size} values from rank {src}")
    return array


def barrier() -> None:
    """Wait until every rank has arrived (with the group's timeout)."""
    g = _require()
    if g.world_size > 1:
        _wait([g.comm.Ibarrier()], "barrier")


def abort(message: str, exit_code: int = 1) -> None:
    """Print ``message`` (prefixed by the rank) to stderr and end the whole job: ``MPI_Abort``
    under MPI, else ``sys.exit``. For a program that catches an exception itself, so that the
    other ranks stop at once instead of waiting for the timeout."""
    g = _group
    print(f"[rank {g.rank}/{g.world_size}] {message}; aborting the job", file=sys.stderr, flush=True)
    if g.comm is not None:
        g.comm.Abort(exit_code)
    sys.exit(exit_code)


def _install_excepthook() -> None:
    previous = sys.excepthook

    def hook(kind: Any, value: Any, tb: Any) -> None:
        previous(kind, value, tb)
        if not issubclass(kind, (KeyboardInterrupt, SystemExit)):
            abort(f"uncaught {kind.__name__}: {value}")

    sys.excepthook = hook


def _no_grad() -> Any:
    from tfm_rs.autograd import no_grad

    return no_grad()


def dropout_seed(seed: int, step: int, index: int) -> int:
    """The dropout RNG state for global micro-batch ``index`` of update ``step``: a pure function,
    so a micro-batch gets the same masks whichever rank computes it (and a one-process run over
    all the micro-batches the same as a many-process one)."""
    return int(np.random.SeedSequence([int(seed), int(step), int(index)]).generate_state(1, np.uint64)[0])


# ------------------------------------------------------------------------------ data parallel


class _Bucket:
    """Parameters whose gradients travel in one all-reduce: one flat float32 buffer, then one
    "had a gradient" flag per parameter (so a parameter no rank used keeps ``grad is None``)."""

    def __init__(self, index: int, params: List[Any], members: List[int]) -> None:
        self.index = index
        self.params = params
        self.members = members
        self.sizes = [int(np.prod(p.shape)) for p in params]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)
        self.numel = int(self.offsets[-1])
        self.buffer = np.zeros(self.numel + len(params), np.float32)
        self.pending = len(params)
        self.request: Any = None


class DistributedDataParallel:
    """Wraps ``module`` for data-parallel training (``torch.nn.parallel.DistributedDataParallel``).

    Call it like the module. Each rank runs its own micro-batches forward and backward; the
    gradients are summed over the ranks in buckets of about ``bucket_cap_mb`` MB, filled in
    reverse registration order (the order the backward pass completes them), each launched with a
    non-blocking ``Iallreduce`` as soon as all its gradients are final and the earlier buckets
    are launched (every rank must start the collectives in the same order). After the last
    backward of a step call :meth:`synchronize`: it launches what is left, waits, and writes the
    reduced gradients back. ``reduce_op="mean"`` divides the sum by the world size (PyTorch's
    default); ``"sum"`` keeps the sum, for a loss already divided by a global count (the
    trainers divide by the global number of target tokens).

    Unused parameters: a parameter the backward never reaches on a rank contributes zeros; one no
    rank produced a gradient for keeps ``grad is None`` everywhere (the same as one process over
    all the data). :meth:`no_sync` skips the communication for gradient accumulation.

    At construction rank 0's parameter values are broadcast, so all ranks start equal.
    ``trace``: when a list, events are appended as they happen — ``("ready", param_index)``,
    ``("launch", bucket)``, ``("synchronize", None)``, ``("done", bucket)`` — for tests and
    debugging.
    """

    def __init__(self, module: Any, bucket_cap_mb: float = 25.0, reduce_op: str = "mean",
                 broadcast_parameters: bool = True) -> None:
        if not bucket_cap_mb > 0:
            raise _core.InvalidArgumentError(f"DistributedDataParallel: bucket_cap_mb must be > 0, got {bucket_cap_mb}")
        if reduce_op not in ("mean", "sum"):
            raise _core.InvalidArgumentError(f"DistributedDataParallel: reduce_op must be 'mean' or 'sum', got "
                                             f"{reduce_op!r}")
        init()
        self.module = module
        self.reduce_op = reduce_op
        self.bucket_cap_mb = float(bucket_cap_mb)
        self.params = [p for p in module.parameters() if p.requires_grad]
        self.trace: Optional[List[Any]] = None
        self.require_sync = True
        self.last_wait_time = 0.0
        self.buckets = self._make_buckets(int(bucket_cap_mb * 2 ** 20))
        self._bucket_of = {i: b.index for b in self.buckets for i in b.members}
        self._ready: set = set()
        self._next_launch = 0
        if broadcast_parameters and get_world_size() > 1:
            for p in module.parameters():
                broadcast(p, 0)
        self._handles = [p.register_post_accumulate_grad_hook(functools.partial(self._on_ready, i))
                         for i, p in enumerate(self.params)]

    def _make_buckets(self, cap_bytes: int) -> List[_Bucket]:
        buckets: List[_Bucket] = []
        members: List[int] = []
        size = 0
        for i in reversed(range(len(self.params))):
            nbytes = 4 * int(np.prod(self.params[i].shape))
            if members and size + nbytes > cap_bytes:
                buckets.append(_Bucket(len(buckets), [self.params[j] for j in members], members))
                members, size = [], 0
            members.append(i)
            size += nbytes
        if members:
            buckets.append(_Bucket(len(buckets), [self.params[j] for j in members], members))
        return buckets

    # -- the module's face ------------------------------------------------------------------------

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)

    def parameters(self) -> Iterator[Any]:
        return self.module.parameters()

    def train(self, mode: bool = True) -> "DistributedDataParallel":
        self.module.train(mode)
        return self

    def eval(self) -> "DistributedDataParallel":
        return self.train(False)

    def remove_hooks(self) -> None:
        """Unregister the gradient hooks (the wrapper stops working; the module is unchanged)."""
        for h in self._handles:
            h.remove()
        self._handles = []

    @contextlib.contextmanager
    def no_sync(self) -> Iterator[None]:
        """Backward passes inside accumulate gradients locally, without communication (all but the
        last micro-batch of a step)."""
        previous, self.require_sync = self.require_sync, False
        try:
            yield
        finally:
            self.require_sync = previous

    # -- the reduction ----------------------------------------------------------------------------

    def _event(self, kind: str, value: Any) -> None:
        if self.trace is not None:
            self.trace.append((kind, value))

    def _on_ready(self, index: int, param: Any) -> None:
        """The post-accumulate-grad hook of parameter ``index`` (runs inside the backward)."""
        if not self.require_sync:
            return
        if index in self._ready:
            raise DistributedError(
                f"DistributedDataParallel: parameter {index} got a second gradient before synchronize(); run the "
                "backward passes of all but the last micro-batch inside no_sync()")
        self._ready.add(index)
        self._event("ready", index)
        self.buckets[self._bucket_of[index]].pending -= 1
        self._launch_ready(final=False)
        self._progress()

    def _launch_ready(self, final: bool) -> None:
        while self._next_launch < len(self.buckets):
            bucket = self.buckets[self._next_launch]
            if bucket.pending and not final:
                return
            self._launch(bucket)
            self._next_launch += 1

    def _launch(self, bucket: _Bucket) -> None:
        self._event("launch", bucket.index)
        g = _group
        if g.world_size == 1:
            return
        buf = bucket.buffer
        for k, p in enumerate(bucket.params):
            lo, hi = bucket.offsets[k], bucket.offsets[k + 1]
            grad = p.grad
            if grad is None:
                buf[lo:hi] = 0.0
                buf[bucket.numel + k] = 0.0
            else:
                buf[lo:hi] = grad.numpy().reshape(-1)
                buf[bucket.numel + k] = 1.0
        bucket.request = g.comm.Iallreduce(g.mpi.IN_PLACE, buf, op=g.mpi.SUM)

    def _progress(self) -> None:
        # Open MPI advances non-blocking collectives only inside MPI calls: test the ones in
        # flight each time the backward hands over a gradient.
        live = [b.request for b in self.buckets if b.request is not None]
        if live:
            _group.mpi.Request.Testall(live)

    def synchronize(self) -> float:
        """Finish the step's gradient all-reduce: launch the buckets not yet launched (their
        missing gradients count as zeros), wait for all of them (with the group's timeout) and
        store the reduced gradients in ``param.grad``. Returns the seconds spent waiting, also
        kept in :attr:`last_wait_time`. A no-op inside :meth:`no_sync`."""
        if not self.require_sync:
            return 0.0
        self._event("synchronize", None)
        self._launch_ready(final=True)
        waited = 0.0
        if _group.world_size > 1:
            t0 = time.perf_counter()
            requests = [b.request for b in self.buckets]
            _wait(requests, f"the gradient all-reduce ({len(requests)} buckets)")
            waited = time.perf_counter() - t0
            for bucket in self.buckets:
                self._unflatten(bucket)
                bucket.request = None
                self._event("done", bucket.index)
        for bucket in self.buckets:
            bucket.pending = len(bucket.params)
        self._ready.clear()
        self._next_launch = 0
        self.last_wait_time = waited
        return waited

    def _unflatten(self, bucket: _Bucket) -> None:
        buf = bucket.buffer
        scale = 1.0 / _group.world_size if self.reduce_op == "mean" else 1.0
        for k, p in enumerate(bucket.params):
            if buf[bucket.numel + k] == 0.0:
                p.grad = None
                continue
            lo, hi = bucket.offsets[k], bucket.offsets[k + 1]
            values = buf[lo:hi].reshape(p.shape)
            if scale != 1.0:
                values = values * np.float32(scale)
            grad = _core.Tensor(values)
            p.grad = grad if p.device == "cpu" else grad.to(p.device)

    def bucket_sizes(self) -> List[int]:
        """Number of gradient values in each bucket, in launch order."""
        return [b.numel for b in self.buckets]

    def state(self) -> Dict[str, Any]:
        """A summary for logs: world size, buckets and their sizes."""
        return {"world_size": get_world_size(), "buckets": len(self.buckets), "bucket_cap_mb": self.bucket_cap_mb,
                "bucket_values": self.bucket_sizes()}


# ------------------------------------------------------------------------------ ZeRO-1


class ZeroRedundancyOptimizer:
    """ZeRO stage 1 (``torch.distributed.optim.ZeroRedundancyOptimizer``): each rank keeps the
    optimizer state of its own share of the parameters only.

    The parameters are divided among the ranks whole, largest first, each to the rank with the
    fewest bytes so far (deterministic, the same on every rank). :meth:`step` runs
    ``optimizer_class`` (default :class:`tfm_rs.optim.Adam`, built with ``defaults``) on this
    rank's share — whose gradients :class:`DistributedDataParallel` has already reduced — and then
    broadcasts every parameter from its owner, so all ranks end the step with the same weights.
    Adam's two moments (8 bytes a parameter) shrink to about ``8/N`` per rank; the broadcast moves
    the parameters once more (the design in ``docs/distributed.md`` would use a reduce-scatter
    instead of the all-reduce to make that free). ``param_groups`` are the local optimizer's
    (learning-rate schedules set them as usual). Checkpointing the sharded state is not supported
    (:meth:`state_dict` raises).
    """

    def __init__(self, params: Any, optimizer_class: Any = None, **defaults: Any) -> None:
        if optimizer_class is None:
            from tfm_rs.optim import Adam as optimizer_class
        init()
        self.params = list(params)
        if not self.params:
            raise _core.InvalidArgumentError("ZeroRedundancyOptimizer: empty parameter list")
        n = get_world_size()
        load = [0] * n
        self.owner = [0] * len(self.params)
        for i in sorted(range(len(self.params)), key=lambda i: (-self.params[i].numel(), i)):
            rank = min(range(n), key=lambda r: (load[r], r))
            self.owner[i] = rank
            load[rank] += self.params[i].numel()
        mine = [p for p, r in zip(self.params, self.owner) if r == get_rank()]
        self.local = optimizer_class(mine, **defaults) if mine else None
        self._group_template = [{**defaults, "params": []}]

    @property
    def param_groups(self) -> List[Dict[str, Any]]:
        return self.local.param_groups if self.local is not None else self._group_template

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        """Update this rank's share, then broadcast every parameter from its owner."""
        if self.local is not None:
            self.local.step()
        g = _require()
        if g.world_size == 1:
            return
        buffers, requests = [], []
        for p, rank in zip(self.params, self.owner):
            buf = np.ascontiguousarray(p.numpy()) if rank == g.rank else np.empty(p.shape, np.float32)
            buffers.append(buf)
            requests.append(g.comm.Ibcast(buf, root=rank))
        _wait(requests, f"the ZeRO parameter broadcast ({len(requests)} parameters)")
        with _no_grad():
            for p, rank, buf in zip(self.params, self.owner, buffers):
                if rank != g.rank:
                    p.copy_(buf)

    def state_bytes(self) -> int:
        """Bytes of optimizer state (tensors) this rank holds."""
        if self.local is None:
            return 0
        return sum(4 * v.numel() for s in self.local.state.values() for v in s.values()
                   if isinstance(v, _core.Tensor))

    def state_dict(self) -> Dict[str, Any]:
        raise _core.InvalidArgumentError("ZeroRedundancyOptimizer: checkpointing sharded optimizer state is not "
                                         "supported; use the plain optimizer for runs that must resume")
