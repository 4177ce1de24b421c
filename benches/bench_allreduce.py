"""All-reduce message-size sweep over MPI (the numbers behind docs/distributed.md's scaling model).

    python benches/bench_allreduce.py [--nproc 2] [--max-mb 64] [--repeat 20] [--tcp] [--json OUT]

Started plainly, the script re-runs itself under ``mpirun -n NPROC`` (as root, with Open MPI's
``OMPI_ALLOW_RUN_AS_ROOT*`` variables); under ``mpirun`` it measures. For message sizes from 4
bytes to ``--max-mb`` (×4 each), float32 sum, in place: the median time of ``--repeat`` blocking
``Allreduce`` calls (after a barrier and a warm-up; a call's time is the slowest rank's), and of
the non-blocking ``Iallreduce`` + ``Wait`` that :class:`tfm_rs.distributed.DistributedDataParallel`
uses. Reported: latency, the algorithm bandwidth ``bytes / t`` and the bus bandwidth
``2(N−1)/N · bytes / t`` (what a ring all-reduce moves per link; NCCL's convention), which the
scaling model compares with a link's speed. Open MPI moves messages between processes of one
machine through shared memory; ``--tcp`` forces its TCP transport over the loopback interface
(``--mca btl self,tcp``), the closer stand-in for a network.

``--smoke``: three sizes, three calls: checks that the script runs (skips, saying why, without
MPI).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np


def launch(args: argparse.Namespace) -> int:
    if shutil.which("mpirun") is None:
        print("bench_allreduce: skipped: mpirun not found (apt-get install openmpi-bin libopenmpi-dev)")
        return 0
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        print("bench_allreduce: skipped: mpi4py not installed (pip install mpi4py)")
        return 0
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_rmaps_base_oversubscribe="1", OMPI_MCA_mpi_yield_when_idle="1", TFM_RS_BENCH_CHILD="1")
    transport = ["--mca", "btl", "self,tcp"] if args.tcp else []
    cmd = ["mpirun", "-n", str(args.nproc), "--bind-to", "none", *transport, sys.executable, __file__,
           *sys.argv[1:]]
    return subprocess.call(cmd, env=env)


def measure(args: argparse.Namespace) -> int:
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank, n = comm.Get_rank(), comm.Get_size()
    sizes = [4 * 4 ** k for k in range(0, 20) if 4 * 4 ** k <= args.max_mb * 2 ** 20]
    repeat = args.repeat
    if args.smoke:
        sizes, repeat = [4, 4096, 1 << 20], 3
    rows = []
    for nbytes in sizes:
        buf = np.ones(nbytes // 4, np.float32)
        times = {"blocking": [], "nonblocking": []}
        for kind in ("blocking", "nonblocking") * (repeat + 1):
            comm.Barrier()
            t0 = time.perf_counter()
            if kind == "blocking":
                comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
            else:
                comm.Iallreduce(MPI.IN_PLACE, buf, op=MPI.SUM).Wait()
            dt = comm.allreduce(time.perf_counter() - t0, op=MPI.MAX)
            times[kind].append(dt)
        med = {k: float(np.median(v[2:])) for k, v in times.items()}  # the first of each: warm-up
        rows.append({"bytes": nbytes, "seconds": med["blocking"], "seconds_nonblocking": med["nonblocking"],
                     "algbw_GBps": nbytes / med["blocking"] / 1e9,
                     "busbw_GBps": 2 * (n - 1) / n * nbytes / med["blocking"] / 1e9})
    if rank == 0:
        print(f"all-reduce (float32 sum, in place) over {n} processes on {MPI.Get_processor_name()}, "
              f"{MPI.Get_library_version().splitlines()[0].strip()}; medians of {repeat}")
        print(f"{'bytes':>12} {'Allreduce µs':>13} {'Iallreduce µs':>14} {'algbw GB/s':>11} {'busbw GB/s':>11}")
        for r in rows:
            print(f"{r['bytes']:>12,} {r['seconds'] * 1e6:>13.1f} {r['seconds_nonblocking'] * 1e6:>14.1f} "
                  f"{r['algbw_GBps']:>11.3f} {r['busbw_GBps']:>11.3f}")
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"nproc": n, "rows": rows}, f, indent=1)
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nproc", type=int, default=2, help="processes (default 2)")
    p.add_argument("--max-mb", type=float, default=64.0, help="largest message in MiB (default 64)")
    p.add_argument("--repeat", type=int, default=20, help="timed calls per size (default 20)")
    p.add_argument("--tcp", action="store_true", help="Open MPI's TCP transport over loopback, not shared memory")
    p.add_argument("--json", help="also write the rows to this JSON file")
    p.add_argument("--smoke", action="store_true", help="three sizes, three calls: checks that it runs")
    args = p.parse_args()
    if os.environ.get("TFM_RS_BENCH_CHILD") == "1":
        return measure(args)
    return launch(args)


if __name__ == "__main__":
    sys.exit(main())
