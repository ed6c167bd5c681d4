"""Work spread over a Dask cluster (the ``[large]`` extra), or done in this process: the one
place that knows about ``distributed``."""

import contextlib
import os

from .errors import MissingExtra


def run_calls(calls, client=None, progress=None, already=0):
    """Call ``function(*args)`` for each of ``calls``: here, one after another, or spread over
    a ``distributed.Client``'s workers; ``progress(done, total)`` first and after each,
    counting ``already`` calls done before this run; the first error is raised. Returns the results,
    in the order they finished."""
    total, results = already + len(calls), []
    if progress:
        progress(already, total)   # the clock starts now, not at the first result

    def finished(result):
        results.append(result)
        if progress:
            progress(already + len(results), total)

    if client is None:
        for function, args in calls:
            finished(function(*args))
        return results
    from distributed import as_completed
    futures = [client.submit(function, *args, pure=False) for function, args in calls]
    try:
        for future in as_completed(futures):
            finished(future.result())
    finally:
        client.cancel(futures)
    return results


@contextlib.contextmanager
def dask_client(workers=None, scheduler=None, threads=None):
    """``(client, threads per worker)``: an existing cluster's (``scheduler`` address), a local
    cluster of ``workers`` processes sharing this machine's cores (``threads`` each, default
    the cores divided among them), or ``(None, None)`` to work in this process."""
    if not workers and not scheduler:
        yield None, None
        return
    try:
        from distributed import Client, LocalCluster
    except ModuleNotFoundError:
        raise MissingExtra("--workers/--scheduler need Dask's distributed: pip install "
                                  "'unet-tf[large]'") from None
    if scheduler:
        with Client(scheduler) as client:
            yield client, None
        return
    import dask
    threads = threads or max(1, (os.cpu_count() or 1) // workers)
    # Dask's default worker environment sets MALLOC_TRIM_THRESHOLD_=65536 and one OpenMP
    # thread: measured here, TensorFlow then runs a chunk ~1.5-2x slower.
    environment = {name: str(threads) for name in
                   ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    with dask.config.set({"distributed.nanny.pre-spawn-environ": environment}), \
            LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                         dashboard_address=None) as cluster, Client(cluster) as client:
        yield client, threads
