"""A run on many devices and hosts: the 'data' mesh and the arrays placed on it, joining the other hosts, one run per
folder, and a signal that stops every host at the same step. train.py holds these around its loop; nothing here
knows the model.
Read next: resume.py.
"""
import contextlib
import fcntl
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import equinox as eqx
import jax
import numpy as np
from jax._src.distributed import global_state
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P
from tqdm import tqdm

import config


@dataclass(frozen=True)
class ClusterConfig:
    tpu: bool = False          # a TPU pod: jax.distributed.initialize() first, then require TPUs; run on every host
    distributed: bool = False  # join a multi-host run on every host: JAX finds a TPU pod, SLURM or Open MPI by
    #                            itself; any other launcher gives the three flags below
    coordinator: str = ""      # HOST:PORT of process 0, with --distributed ("" = found by JAX)
    processes: int = 0         # processes in the run, with --coordinator
    process_id: int = 0        # this process's index in [0, --processes), with --coordinator
    peer_timeout: int = 60     # seconds a silent process (killed, out of memory, frozen) is waited for before the
    #                            others stop; JAX's own heartbeat check is set to twice this

    def __post_init__(self):
        explicit = bool(self.coordinator)
        config.check(self, [
            ("coordinator", not explicit or self.distributed, "needs --distributed"),
            ("processes", not explicit or self.processes >= 1, "must be at least 1 with --coordinator"),
            ("process_id", not explicit or 0 <= self.process_id < self.processes,
             f"must be in [0, --processes {self.processes})"), ("peer_timeout", self.peer_timeout >= 2, "must be at "
                                                                "least 2 (seconds)")])


def make_mesh():
    """All devices of all hosts on one 'data' axis (Auto: eqx.filter_shard rejects Explicit axes)."""
    return jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


def replicate(tree, mesh):
    """Puts the same host values on every device of every host (each host holds identical values)."""
    place = lambda x: jax.make_array_from_process_local_data(NamedSharding(mesh, P()), np.asarray(x))  # noqa: E731
    return jax.tree.map(lambda x: place(x) if eqx.is_array(x) else x, tree)


def global_batch(mesh, *local):
    """Each host's rows -> one global array per input, split over all devices on the 'data' axis."""
    return tuple(jax.make_array_from_process_local_data(NamedSharding(mesh, P("data")), x) for x in local)


def local_copy(tree):
    """A replicated tree -> its copy on this host's first device, for what one host does alone (save, evaluate)."""
    return jax.tree.map(lambda x: x.addressable_data(0) if isinstance(x, jax.Array) else x, tree)


def join(ccfg: ClusterConfig):
    """--tpu or --distributed: jax.distributed.initialize(), before anything else touches JAX."""
    if not (ccfg.tpu or ccfg.distributed):
        return
    flag = "--tpu" if ccfg.tpu else "--distributed"
    explicit = dict(coordinator_address=ccfg.coordinator, num_processes=ccfg.processes, process_id=ccfg.process_id)
    try:
        jax.distributed.initialize(**(explicit if ccfg.coordinator else {}),
                                   heartbeat_timeout_seconds=2 * ccfg.peer_timeout)
    except (ValueError, RuntimeError) as e:
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{flag}: could not join a multi-host run ({why}); give --coordinator HOST:PORT "
                         "--processes N --process-id I, or run without it") from None
    if ccfg.tpu and jax.default_backend() != "tpu":
        raise ValueError(f"--tpu: JAX sees no TPU (backend {jax.default_backend()}); run without --tpu")
    threading.Thread(target=watch_peers, args=(ccfg.peer_timeout,), daemon=True).start()


# XLA's status codes: a collective whose peer died raises one of these at once, before anyone knows who died
RUNTIME_ERRORS = ("UNKNOWN:", "UNAVAILABLE:", "INTERNAL:", "ABORTED:", "CANCELLED:", "DEADLINE_EXCEEDED:")


def watch_peers(timeout: int):
    """Every process bumps a counter of its own in JAX's coordination service (process 0 holds it) every second and
    reads the others'. When another's counter stands still for timeout seconds, or the service is gone with
    process 0, this process stops with one line, before JAX's heartbeat check aborts it with pages of C++ log."""
    client, me, n = global_state.client, jax.process_index(), jax.process_count()
    seen, beat = {}, 0
    while True:
        beat += 1
        try:
            client.key_value_set(f"alive/{me}", str(beat), allow_overwrite=True)
            counters = dict(client.key_value_dir_get("alive/"))
        except Exception:  # noqa: BLE001  (any failure to reach the service: process 0 is gone)
            lost(0, n)
        now = time.monotonic()
        for p in set(range(n)) - {me}:
            if seen.get(p, (None,))[0] != counters.get(f"alive/{p}"):
                seen[p] = (counters.get(f"alive/{p}"), now)
            if now - seen[p][1] > timeout:
                lost(p, n)
        time.sleep(1)


def lost(process: int, processes: int):
    """The one line for a lost peer, then an exit that skips JAX's shutdown barrier (it would wait for the dead)."""
    tqdm.write(f"error: process {process} of {processes} stopped answering: this one stops too; --resume continues "
               "the run from its newest state", file=sys.stderr)
    os._exit(1)


def explain(error: Exception, ccfg: ClusterConfig):
    """A runtime error of a multi-host collective: waits for watch_peers to name the lost process (it exits)."""
    if jax.process_count() > 1 and str(error).startswith(RUNTIME_ERRORS):
        time.sleep(ccfg.peer_timeout + 3)


@contextlib.contextmanager
def run_lock(out: Path):
    """Holds an OS lock on out/train.lock while the run lives (process 0's, which saves; the OS drops it when the
    process dies, so a killed run never blocks the next one); a second run into out is refused on every host."""
    path, held = out / "train.lock", None
    if jax.process_index() == 0:
        held = open(path, "a+")
        try:
            fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
            held.truncate(0)
            held.write(f"pid {os.getpid()} on {socket.gethostname()}")
            held.flush()
        except BlockingIOError:  # another process holds it
            held.close()
            held = None
    free = np.array(held is not None)
    if jax.process_count() > 1:
        free = multihost_utils.broadcast_one_to_all(free)
    if not free:
        raise ValueError(f"{out} is in use by another run ({path.read_text().strip() or 'train.py'}): wait for it to "
                         "end, or give another --out")
    try:
        yield
    finally:
        if held is not None:
            held.close()


@contextlib.contextmanager
def caught_signals():
    """Inside, SIGTERM (a preemption notice) and SIGINT only append their name to the list it gives: the work stops
    where it chooses, at a step or a shard boundary, instead of wherever the signal lands."""
    received, caught = [], (signal.SIGTERM, signal.SIGINT)
    before = {sig: signal.getsignal(sig) for sig in caught}
    for sig in caught:
        signal.signal(sig, lambda number, frame: received.append(signal.Signals(number).name))
    try:
        yield received
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def stop_signals():
    """SIGTERM and SIGINT stop the run at the next step -> stopping(step), the name of the signal once every host is
    to stop at this step, else "". One process keeps its own note (caught_signals). Several rely on JAX's
    preemption service, which catches SIGTERM on any host and names the step at which all of them stop (SIGINT is
    passed on to it as SIGTERM)."""
    if jax.process_count() == 1:
        with caught_signals() as received:
            yield lambda step: received[0] if received else ""
        return
    before = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, lambda *_: os.kill(os.getpid(), signal.SIGTERM))
    try:
        yield lambda step: "SIGTERM" if multihost_utils.reached_preemption_sync_point(step) else ""
    finally:
        signal.signal(signal.SIGINT, before)
