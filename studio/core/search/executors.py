"""Where trials run: in this process, in local worker processes, or on Ray. The driver hands
each the same problem and requests and reads outcomes as they finish, so every executor is the
same code path above it.

A trial that raises comes back as its one-line reason; a worker that dies (killed, out of
memory) fails the trials it held with that reason, and the executor starts a fresh pool for
the rest. Ray is imported only when asked for (``pip install ".[cluster]"``).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import multiprocessing
import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Protocol

from studio.core.errors import StudioError
from studio.core.search.problem import SearchProblem, TrialOutcome, TrialRequest

Finished = tuple[TrialRequest, TrialOutcome | str]
"""A request and its outcome, or why it failed."""
DIED = "the worker process died (killed, or out of memory)"


def reason(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def run_trial(problem: SearchProblem, request: TrialRequest) -> TrialOutcome | str:
    """The worker's entry: the outcome, or the reason the trial raised."""
    try:
        return problem.evaluate(request)
    except Exception as error:  # a trial's failure is data: the search goes on
        return reason(error)


def prepare_here(problem: SearchProblem) -> int:
    """Open the problem in this process (a worker's warm-up); returns the process id, so a
    pool can tell when every worker is warm. A problem that cannot open fails in its
    trials instead, each with the reason."""
    with contextlib.suppress(Exception):  # the trials report it, one line each
        problem.prepare()
    return os.getpid()


WARM_ROUNDS = 200
"""Warm-up rounds at most before giving up on a worker that never shows (it would then open
the problem in its first trial, as without a warm-up)."""
WARM_PAUSE_S = 0.05
"""How long a warm-up task holds its worker, so a worker still starting gets the next one."""


def _warm_task(problem: SearchProblem) -> int:
    pid = prepare_here(problem)
    time.sleep(WARM_PAUSE_S)
    return pid


class Executor(Protocol):
    workers: int
    where: str

    def start(self, problem: SearchProblem) -> None:
        """Start every worker and open ``problem`` in it (model, data) before any trial, so
        a generation's first trials do not carry that cost and it can be timed apart. The
        workers then stay up, warm, across generations until :meth:`close`."""
        ...

    def run(self, problem: SearchProblem, requests: Sequence[TrialRequest]
            ) -> Iterator[Finished]: ...

    def close(self) -> None: ...


class InProcess:
    """One trial at a time in this process: the reference the others must match."""

    workers, where = 1, "this process"

    def start(self, problem: SearchProblem) -> None:
        prepare_here(problem)

    def run(self, problem: SearchProblem, requests: Sequence[TrialRequest]
            ) -> Iterator[Finished]:
        for request in requests:
            yield request, run_trial(problem, request)

    def close(self) -> None:
        pass


def _worker_start() -> None:
    import torch

    torch.set_num_threads(1)


class LocalProcesses:
    """A pool of spawned worker processes (fork and torch's threads do not mix)."""

    def __init__(self, workers: int) -> None:
        self.workers, self.where = workers, f"{workers} local processes"
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._warm: str | None = None
        """The key of the problem every worker of the pool has open."""

    def start(self, problem: SearchProblem) -> None:
        """Warm-up tasks until every worker has answered: the pool spawns one worker per
        task waiting (up to ``workers``), and a worker takes tasks only once it is up."""
        key = problem.key
        if self._pool is not None and self._warm == key:
            return
        pool, seen = self._executor(), set()
        for _ in range(WARM_ROUNDS):
            seen.update(f.result() for f in [pool.submit(_warm_task, problem)
                                             for _ in range(self.workers)])
            if len(seen) >= self.workers:
                break
        self._warm = key

    def _executor(self) -> concurrent.futures.ProcessPoolExecutor:
        if self._pool is None:
            self._pool = concurrent.futures.ProcessPoolExecutor(
                self.workers, mp_context=multiprocessing.get_context("spawn"),
                initializer=_worker_start)
        return self._pool

    def run(self, problem: SearchProblem, requests: Sequence[TrialRequest]
            ) -> Iterator[Finished]:
        self.start(problem)
        pool = self._executor()
        futures = {pool.submit(run_trial, problem, request): request for request in requests}
        broken = False
        for future in concurrent.futures.as_completed(futures):
            try:
                yield futures[future], future.result()
            except BrokenProcessPool:
                broken = True
                yield futures[future], DIED
        if broken:
            self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
            self._warm = None


class RayCluster:
    """Trials as Ray tasks, one CPU each. ``address``: 'local' starts a private local Ray of
    ``workers`` CPUs; anything else ('auto', host:port) joins that cluster, whose nodes must
    hold the same environment and see the same data paths."""

    def __init__(self, address: str, workers: int) -> None:
        try:
            import ray
        except ImportError as error:
            raise StudioError("--ray-address needs Ray: pip install \".[cluster]\"") from error
        self._ray = ray
        self._started = not ray.is_initialized()
        if self._started:
            options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                       "configure_logging": False}
            if address == "local":
                ray.init(num_cpus=workers, runtime_env={
                    "env_vars": {"PYTHONPATH": os.environ.get("PYTHONPATH", "")}}, **options)
            else:
                ray.init(address=address, **options)
        self.workers = int(ray.cluster_resources().get("CPU", workers))
        self.where = f"Ray ({address}, {self.workers} CPUs)"
        self._remote = ray.remote(num_cpus=1, max_retries=0)(run_trial)
        self._warm_remote = ray.remote(num_cpus=1, max_retries=0)(_warm_task)
        self._warm: str | None = None

    def start(self, problem: SearchProblem) -> None:
        """As the local pool: warm-up tasks, one CPU each, until ``workers`` distinct worker
        processes have opened the problem (on a cluster, those Ray happens to use)."""
        key = problem.key
        if self._warm == key:
            return
        ray, seen = self._ray, set()
        shared = ray.put(problem)
        for _ in range(WARM_ROUNDS):
            seen.update(ray.get([self._warm_remote.remote(shared)
                                 for _ in range(self.workers)]))
            if len(seen) >= self.workers:
                break
        self._warm = key

    def run(self, problem: SearchProblem, requests: Sequence[TrialRequest]
            ) -> Iterator[Finished]:
        ray = self._ray
        self.start(problem)
        shared = ray.put(problem)
        pending = {self._remote.remote(shared, request): request for request in requests}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                request = pending.pop(ref)
                try:
                    yield request, ray.get(ref)
                except ray.exceptions.RayError as error:
                    yield request, f"{DIED if 'died' in str(error) else reason(error)}"

    def close(self) -> None:
        if self._started and self._ray.is_initialized():
            self._ray.shutdown()


def make_executor(workers: int = 1, ray_address: str | None = None) -> Executor:
    if ray_address:
        return RayCluster(ray_address, workers)
    if workers > 1:
        return LocalProcesses(workers)
    return InProcess()
