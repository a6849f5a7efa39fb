"""Train UPGen, data parallel, from a laptop CPU to a TPU pod with the same code.

    python train.py                       # shapes world: image tokenizer, token shards, 5000 UPGen steps
    python train.py --images DIR --out runs/mine   # your image-caption pairs (a.jpg + a.txt)
    python train.py --resume              # continue the last run in --out exactly where it stopped
    python train.py --tpu ...             # on every host of a TPU pod slice
    srun python train.py --distributed ...   # on every host of any other cluster (SLURM, Open MPI, --coordinator)

The step and the loop; the data is shards.py. One jitted step holds loss, gradient, clipping and AdamW; each device
gets a slice of the batch on a 'data' mesh axis, parameters and optimizer state are replicated. The learning rate
follows progress in [0, 1]: steps done of --steps or the share of the time budget spent. Read next: evaluate.py.
"""
import argparse
import contextlib
import dataclasses
import fcntl
import math
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P
from tqdm import tqdm

import checkpoint
import config
import evaluate
import sample
import shards
import upgen
import vocab
import vqgan
import vqgan_train

DEFAULT_MINUTES = 10.0  # a run on your pictures: the whole run's budget (its tokenizer trains in a third of it)
FINISH_SECONDS = 20  # what a budgeted run keeps for after training (upgen.eqx, samples.png): its schedule ends there
HELD_OUT_PAIRS, HELD_OUT_SECONDS = 100, 40  # a run on your pictures reports on this many held-out pairs at its end


@dataclass(frozen=True)
class TrainConfig:
    images: str = ""                  # image-caption folder / .tar shard(s); "" = the shapes world
    shapes: int = 5000                # shapes-world examples when images == "" (encoding ~1 s per 100 on 2 cores)
    text: str = ""                    # unpaired text (.txt file or folder, one document per line); "" = none
    mix: tuple = (1.0, 0.0, 0.0)      # batch shares of paired, image-only and text-only examples (the paper's
    #                                   0.7, 0.15, 0.15 when a --text corpus is given; on shapes alone they cost steps)
    steps: int = 5000                 # optimizer steps in the whole run (9 minutes on the README's 2-core CPU);
    #                                   0 = as many as fit in --minutes
    batch: int = 32                   # global batch (all devices, all hosts)
    lr: float = 3e-3                  # peak learning rate, reached after warmup, cosine-decayed to lr/10
    warmup: int = 50                  # linear warmup steps
    weight_decay: float = 0.05        # AdamW decay of weight matrices and embeddings (not of biases, norm scales)
    clip: float = 1.0                 # global gradient-norm clip
    accum: int = 1                    # micro-batches per step, their gradients summed: the same step in 1/accum the
    #                                   activation memory (the paper's batch 4096 on fewer devices)
    remat: bool = False               # recompute each block's activations in the backward pass: less memory, ~1/3
    #                                   more FLOPs. A training choice, not the model's: upgen.eqx never records it
    seed: int = 0                     # model init, masks and batch order all follow from it

    def __post_init__(self):
        object.__setattr__(self, "mix", tuple(self.mix))  # argparse and JSON give a list
        config.check(self, [(name, getattr(self, name) >= 1, "must be at least 1") for name in ("shapes", "batch")] + [
            ("mix", len(self.mix) == 3 and min(self.mix) >= 0 and sum(self.mix) > 0, "must be 3 shares >= 0, not 0"),
            ("text", not self.text or self.mix[2] > 0, "needs a text-only share in --mix, e.g. --mix 0.7 0.15 0.15"),
            ("steps", self.steps >= 0, "must be at least 0 (0 fills the time budget)"), ("lr", self.lr > 0, "must be "
             "positive"), ("warmup", self.warmup >= 1, "must be at least 1"), ("clip", self.clip > 0, "must be > 0"),
            ("weight_decay", self.weight_decay >= 0, "must be at least 0"), ("accum", self.accum >= 1, "must be at "
             "least 1"), ("batch", self.batch % self.accum == 0, f"must be a multiple of --accum {self.accum}")])


@dataclass(frozen=True)
class RunConfig:
    out: str = "runs/shapes"          # run folder: vqgan.eqx, shards/, shapes/, state_<step>.eqx, upgen.eqx, logs
    vqgan: str = ""                   # image tokenizer copied into out if it has none ("" = vqgan_train's choice)
    vqgan_codes: int = 32             # codes of one trained on --images: over scanned digits, a 10-minute run with
    #                                   32 captions 57% of held-out pictures right where 512 (the shapes one's) let 14%
    vqgan_share: float = 1 / 3        # share of the run's budget for training that tokenizer; the rest is UPGen's
    vqgan_pictures: int = 5000        # pictures of --images it trains on, a tenth held out (~60 MB at 64x64)
    shards: str = ""                  # token shards folder, tokenised into first when missing ("" = out/shards)
    minutes: float | None = None      # budget of the whole run; None = DEFAULT_MINUTES with --images, else 0 (none)
    resume: bool = False              # continue from the newest state_<step>.eqx in out, with its saved TrainConfig
    stop_after: int = 0               # steps of this invocation, then save and stop (0 = run to the end)
    keep: int = 2                     # state_<step>.eqx files kept (0 = none, only upgen.eqx at the end)
    save_every: int = 500             # steps between state files
    log_every: int = 50               # steps between log lines; a budgeted run's hosts share the clock only then
    samples: int = 8                  # pictures drawn at the end from held-out captions, spread over the data
    tpu: bool = False                 # multi-host TPU: jax.distributed.initialize() first, then require TPUs
    distributed: bool = False         # any multi-host run: jax.distributed.initialize() finds a TPU pod, SLURM or
    #                                   Open MPI by itself, or takes the three fields below from any other launcher
    coordinator: str = ""             # HOST:PORT of process 0 ("" = found by JAX)
    processes: int = 0                # processes in the run (with coordinator)
    process_id: int = 0               # this process's index in [0, processes) (with coordinator)

    def __post_init__(self):
        explicit = bool(self.coordinator)
        config.check(self, [("minutes", self.minutes is None or self.minutes >= 0, "must be positive, or 0 for none"),
                          ("stop_after", self.stop_after >= 0, "must be at least 0 (0 runs to the end)")] + [
            (name, getattr(self, name) >= 1, "must be at least 1") for name in
            ("vqgan_codes", "vqgan_pictures", "save_every", "log_every")] + [
            ("vqgan_share", 0 < self.vqgan_share <= 1, "must be in (0, 1]")] + [
            (name, getattr(self, name) >= 0, "must be at least 0") for name in ("keep", "samples")] + [
            ("coordinator", not explicit or self.distributed, "needs --distributed"),
            ("processes", not explicit or self.processes >= 1, "must be at least 1 with --coordinator"),
            ("process_id", not explicit or 0 <= self.process_id < self.processes,
             f"must be in [0, --processes {self.processes})")])


# ---------------------------------------------------------------------------------------------------
# The step: data parallel over a 'data' mesh axis


def make_mesh():
    """All devices of all hosts on one 'data' axis (Auto: eqx.filter_shard rejects Explicit axes)."""
    return jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


def replicate(tree, mesh):
    """Puts the same host values on every device of every host (each host holds identical values)."""
    replicated = NamedSharding(mesh, P())
    place = lambda x: jax.make_array_from_process_local_data(replicated, np.asarray(x))
    return jax.tree.map(lambda x: place(x) if eqx.is_array(x) else x, tree)


def global_batch(mesh, *local):
    """Each host's rows -> one global array per input, split over all devices on the 'data' axis."""
    return tuple(jax.make_array_from_process_local_data(NamedSharding(mesh, P("data")), x) for x in local)


def local_copy(tree):
    """A replicated tree -> its copy on this host's first device, for what one host does alone (save, evaluate)."""
    return jax.tree.map(lambda x: x.addressable_data(0) if isinstance(x, jax.Array) else x, tree)


def make_optimizer(tcfg: TrainConfig):
    """Global-norm clipping, then AdamW's update before its learning rate: train_step multiplies by the
    rate, so the schedule is a plain function of the step and the run's progress."""
    matrices = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)  # no decay on biases and norms
    return optax.chain(optax.clip_by_global_norm(tcfg.clip), optax.scale_by_adam(b1=0.9, b2=0.95),
                       optax.add_decayed_weights(tcfg.weight_decay, mask=matrices))


def learning_rate(step: int, progress: float, tcfg: TrainConfig) -> float:
    """Linear warmup over tcfg.warmup steps, times a cosine from tcfg.lr at progress 0 to lr/10 at progress 1."""
    warmup = min(1.0, (step + 1) / tcfg.warmup)
    return tcfg.lr * warmup * (0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, progress))))


class Trainer(NamedTuple):
    """The step's fixed parts, static under jit: the optimizer, the mesh, micro-batches, rematerialisation."""
    optimizer: optax.GradientTransformation
    mesh: jax.sharding.Mesh
    accum: int = 1
    remat: bool = False


def make_trainer(tcfg: TrainConfig) -> Trainer:
    return Trainer(make_optimizer(tcfg), make_mesh(), tcfg.accum, tcfg.remat)


@eqx.filter_jit(donate="all")
def train_step(params, batch, lr, key, trainer: Trainer):
    """One step: params = (model, opt_state), replicated; batch = (tokens (B, L), kinds (B,)) sharded on 'data'; lr a
    float32 scalar -> (updated params, loss, metrics: accuracies and the gradient's norm before clipping)."""
    replicated, sharded = NamedSharding(trainer.mesh, P()), NamedSharding(trainer.mesh, P("data"))
    model, opt_state = eqx.filter_shard(params, replicated)
    batch = eqx.filter_shard(batch, sharded)
    (loss, metrics), grads = accumulated_grad(model, batch, trainer, key=key)  # XLA all-reduces the gradients
    metrics = {**metrics, "grad_norm": optax.tree.norm(grads)}  # finite loss and gradients: the weights are too
    updates, opt_state = trainer.optimizer.update(grads, opt_state, eqx.filter(model, eqx.is_inexact_array))
    model = eqx.apply_updates(model, jax.tree.map(lambda u: -lr * u, updates))
    return eqx.filter_shard((model, opt_state), replicated), loss, metrics


def accumulated_grad(model, batch, trainer: Trainer, *, key):
    """upgen.loss_fn and its gradient on batch = (tokens (B, L), kinds (B,)), computed on trainer.accum micro-batches
    of B / accum rows in a lax.scan -> ((loss, metrics), grads), the same as on the whole batch up to float rounding.

    The whole batch is masked first, so each row gets the mask it would get unsplit; each micro-batch's weighted
    cross-entropy is divided by the whole batch's masked count, so the gradients add up to the whole batch's."""
    (tokens, kinds), accum, mesh = batch, trainer.accum, trainer.mesh
    if (tokens.shape[0] // accum) % mesh.size:
        raise ValueError(f"--batch {tokens.shape[0]} over --accum {accum} micro-batches is {tokens.shape[0] // accum} "
                         f"rows, which must be a multiple of the {mesh.size} devices")
    cfg = model.cfg
    inputs, masked = upgen.mask_tokens(tokens, kinds, cfg, key=key)  # (B, L), (B, L)
    count = jnp.maximum(masked.sum(), 1)

    def loss(model, batch):
        inputs, tokens, masked, kinds = batch
        logits = jax.vmap(lambda seq: model(seq, remat=trainer.remat))(inputs)  # (B / accum, L, V)
        sums = upgen.masked_sums(logits, tokens, masked, kinds, cfg)
        return sums["loss"] / count, sums

    def add(grads, batch):
        more, sums = eqx.filter_grad(loss, has_aux=True)(model, batch)
        return jax.tree.map(jnp.add, grads, more), sums

    # Row i goes to micro-batch i % accum: each device's rows split among the micro-batches, so every micro-batch
    # is spread over all devices and none waits for rows from another device.
    split = lambda x: jnp.swapaxes(x.reshape(-1, accum, *x.shape[1:]), 0, 1)  # noqa: E731  (accum, B / accum, ...)
    batches = eqx.filter_shard(jax.tree.map(split, (inputs, tokens, masked, kinds)),
                               NamedSharding(mesh, P(None, "data")))
    zeros = jax.tree.map(jnp.zeros_like, eqx.filter(model, eqx.is_inexact_array))
    grads, sums = jax.lax.scan(add, zeros, batches)  # sums: (accum,) each
    return upgen.per_masked_token(jax.tree.map(lambda s: s.sum(0), sums)), grads


@eqx.filter_jit
def init_state(mcfg, optimizer, *, key):
    """A fresh model and its optimizer state."""
    model = upgen.UPGen(mcfg, key=key)
    return model, optimizer.init(eqx.filter(model, eqx.is_inexact_array))


# ---------------------------------------------------------------------------------------------------
# Checkpoints: out/state_<step>.eqx holds everything --resume needs; out/upgen.eqx only the model


class State(NamedTuple):
    """What changes step by step: the model, its optimizer state and the steps done."""
    model: upgen.UPGen
    opt_state: optax.OptState
    step: int


class Setup(NamedTuple):
    """What the loop is given once: the configs, the text tokenizer saved with each state, this host's corpus."""
    tcfg: TrainConfig
    run: RunConfig
    mcfg: upgen.UPGenConfig
    tokenizer: vocab.Tokenizer
    corpus: tuple  # (image shards, text shards) of this host, memory-mapped


def save_state(state: State, progress: float, setup: Setup):
    """out/state_<step>.eqx: the state, the schedule's progress and the run's configs; keeps the newest run.keep."""
    configs = {"upgen": setup.mcfg, "train": setup.tcfg, "run": setup.run, "tokenizer": setup.tokenizer}
    header = {"step": state.step, "progress": progress, **{k: dataclasses.asdict(v) for k, v in configs.items()}}
    out = Path(setup.run.out)
    checkpoint.save_checkpoint(out / f"state_{state.step}.eqx", header, local_copy((state.model, state.opt_state)))
    for old in state_files(out)[:-setup.run.keep]:
        old.unlink()


def state_files(out: Path):
    return sorted(out.glob("state_*.eqx"), key=lambda p: int(p.stem.split("_")[1]))


class Saved(NamedTuple):
    """What a state_<step>.eqx holds."""
    step: int
    model: upgen.UPGen
    opt_state: optax.OptState
    mcfg: upgen.UPGenConfig
    tcfg: TrainConfig
    tokenizer: vocab.Tokenizer
    progress: float  # the schedule's progress at step


def load_state(path: Path) -> Saved:
    def configs(header):
        return upgen.UPGenConfig(**header["upgen"]), TrainConfig(**header["train"])
    header, (model, opt_state) = checkpoint.load_checkpoint(path, "train", lambda h: eqx.filter_eval_shape(
        init_state, configs(h)[0], make_optimizer(configs(h)[1]), key=jax.random.key(0)))
    return Saved(header["step"], model, opt_state, *configs(header), vocab.tokenizer_from_header(header["tokenizer"]),
                 header["progress"])


# ---------------------------------------------------------------------------------------------------
# A run on a shared cluster: one run per folder, and a signal stops it at a step every host agrees on


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
def stop_signals():
    """SIGTERM (a preemption notice) and SIGINT stop the run at the next step instead of killing it -> stopping(step),
    the name of the signal once every host is to stop at this step, else "".

    One process keeps its own flag. Several rely on JAX's preemption service, which catches SIGTERM on any host and
    names the step at which all of them stop (SIGINT is passed on to it as SIGTERM)."""
    received, caught = [], (signal.SIGTERM, signal.SIGINT)
    before = {sig: signal.getsignal(sig) for sig in caught}
    if jax.process_count() > 1:
        signal.signal(signal.SIGINT, lambda *_: os.kill(os.getpid(), signal.SIGTERM))
        stopping = lambda step: "SIGTERM" if multihost_utils.reached_preemption_sync_point(step) else ""  # noqa: E731
    else:
        for sig in caught:
            signal.signal(sig, lambda number, frame: received.append(signal.Signals(number).name))
        stopping = lambda step: received[0] if received else ""  # noqa: E731
    try:
        yield stopping
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


# ---------------------------------------------------------------------------------------------------
# The schedule: progress in [0, 1], from the step count and the clock


@dataclass(frozen=True)
class Budget:
    """The clock's part of the schedule, spent from `start` to `end` (perf_counter seconds; None = no budget). A
    resumed run starts at `before`, the progress saved in its state, and spends the rest over its own budget."""
    start: float
    end: float | None
    before: float = 0.0

    def share(self) -> float:
        """The schedule's progress on the clock, process 0's on every host (call it on every host)."""
        if self.end is None:
            return 0.0
        spent = min(1.0, (time.perf_counter() - self.start) / max(self.end - self.start, 1e-9))
        share = np.array(self.before + (1 - self.before) * spent)
        return float(multihost_utils.broadcast_one_to_all(share) if jax.process_count() > 1 else share)


def progress(step: int, tcfg: TrainConfig, clock_share: float) -> float:
    """The run's progress: steps done of tcfg.steps (0 = no step count), or the clock's share, whichever is further."""
    return max(step / tcfg.steps if tcfg.steps else 0.0, clock_share)


# ---------------------------------------------------------------------------------------------------
# The run: configuration, data, then the loop, then the model and a few samples


def open_log(out: Path, started: float, process: int):
    """-> log(line): on process 0, prints the line after the seconds since `started` and appends it to train.log."""
    if process:
        return lambda line: None
    file = open(out / "train.log", "a")

    def log(line):
        line = f"[{time.perf_counter() - started:5.0f} s] {line}"
        tqdm.write(line)
        print(line, file=file, flush=True)
    return log


def start_or_resume(tcfg: TrainConfig, run: RunConfig, out: Path, log):
    """-> (the saved state or None, the budget's minutes or 0). main() has set a resumed run's configs."""
    saved = load_state(state_files(out)[-1]) if run.resume and state_files(out) else None
    if run.resume:
        if saved is None:
            raise ValueError(f"--resume: no state_<step>.eqx in {out}; run without --resume to start")
        header = checkpoint.read_header(state_files(out)[-1])
        before, now = {**header["train"], **header["run"]}, {**dataclasses.asdict(tcfg), **dataclasses.asdict(run)}
        changed = [f"--{k.replace('_', '-')} {before[k]} -> {now[k]}" for k in sorted(MAY_CHANGE)
                   if before[k] != now[k]]
        log(f"resuming {state_files(out)[-1]} at step {saved.step}, progress {saved.progress:.3f}"
            + (f"; changed: {', '.join(changed)}" if changed else ""))
    elif state_files(out):
        raise ValueError(f"{out} holds {state_files(out)[-1].name} of an earlier run: --resume continues it, "
                         f"or give another --out")
    minutes = run.minutes if run.minutes is not None else DEFAULT_MINUTES if tcfg.images else 0
    if not minutes and not tcfg.steps:
        raise ValueError("--minutes 0 needs --steps N: give the run a length or a time budget")
    if tcfg.batch % jax.device_count():
        raise ValueError(f"--batch {tcfg.batch} must be a multiple of the {jax.device_count()} devices")
    steps = f" or after {tcfg.steps} steps" if tcfg.steps else ""
    log(f"time budget: {minutes} min for the whole run (data, training, samples); the schedule ends with it{steps}"
        if minutes else f"no time budget: {tcfg.steps} steps")
    return saved, minutes


def interval_figures(pending, seconds, batch_tokens) -> dict:
    """Mean loss, accuracies and gradient norm of the steps since the last log point, and their tokens/s."""
    losses, metrics = zip(*jax.device_get(pending))
    figures = {"loss": np.mean(losses), **{k: np.mean([m[k] for m in metrics]) for k in metrics[0]}}
    if seconds is not None:  # the first interval holds the compilation, so it gives no speed
        figures["tok/s"] = len(pending) * batch_tokens / seconds
    return figures


def check_finite(figures: dict, step: int, out: Path):
    """A loss or gradient that is not finite stops the run here, before anything is saved from its weights."""
    if not (np.isfinite(figures["loss"]) and np.isfinite(figures["grad_norm"])):
        newest = state_files(out)[-1].name if state_files(out) else None
        raise ValueError(f"training diverged by step {step} (loss {figures['loss']:.4g}, gradient norm "
                         f"{figures['grad_norm']:.4g}); nothing saved from these weights. " + (
                             f"Newest good state: {newest}; --resume --lr SMALLER continues from it" if newest else
                             "No state was saved before it: start again with a smaller --lr"))


def train_loop(state: State, setup: Setup, budget: Budget, log) -> State:
    """Steps until the schedule's progress reaches 1, run.stop_after steps, or a stop signal; logs (with the validation
    loss) and saves on the way, every save after a check of the loss. A signal saves the step reached and exits."""
    tcfg, run, mcfg = setup.tcfg, setup.run, setup.mcfg
    out, process, trainer = Path(run.out), jax.process_index(), make_trainer(tcfg)
    counts = shards.kind_counts(tcfg.batch // jax.process_count(), tcfg.mix)
    train_key = jax.random.split(jax.random.key(tcfg.seed))[1]
    stop = state.step + run.stop_after if run.stop_after else math.inf
    held_out = [] if process else shards.held_out_rows(Path(run.shards or out / "shards"), evaluate.VALIDATION_PAIRS)
    # The clock's share is process 0's, shared at log points and constant between them: all hosts take the same lr
    # and stop at the same step without talking every step; the lr lags the clock by at most log_every steps.
    clock = budget.share()
    bar = tqdm(initial=state.step, total=tcfg.steps or None, disable=process != 0, desc="train")
    model, opt_state, step = state
    pending, since, signalled = [], None, ""
    with stop_signals() as stopping:
        while progress(step, tcfg, clock) < 1 and step < stop and not signalled:
            batch = global_batch(trainer.mesh, *shards.local_batch(setup.corpus, step, counts, mcfg, seed=tcfg.seed,
                                                                   process=process))
            lr = learning_rate(step, progress(step, tcfg, clock), tcfg)
            (model, opt_state), loss, metrics = train_step((model, opt_state), batch, jnp.float32(lr),
                                                           jax.random.fold_in(train_key, step), trainer)
            pending.append((loss, metrics))
            step += 1
            bar.update()
            signalled = stopping(step)
            save = step % run.save_every == 0 or step == stop or signalled
            if step % run.log_every == 0 or save or progress(step, tcfg, clock) >= 1:
                clock = budget.share()
                seconds = None if since is None else time.perf_counter() - since
                line = interval_figures(pending, seconds, tcfg.batch * mcfg.seq_len)
                check_finite(line, step, out)
                line.update(evaluate.validation_loss(local_copy(model), held_out) if len(held_out) else {})
                bar.set_postfix({k: f"{v:.3g}" for k, v in line.items()})
                log(f"step {step} lr {lr:.2e} progress {progress(step, tcfg, clock):.3f} "
                    + " ".join(f"{k} {v:.4g}" for k, v in line.items()))
                pending, since = [], time.perf_counter()
            if (save or progress(step, tcfg, clock) >= 1) and run.keep > 0 and process == 0:
                save_state(State(model, opt_state, step), progress(step, tcfg, clock), setup)
    bar.close()
    if signalled:
        saved = f"state_{step}.eqx saved; --resume continues" if run.keep else "nothing saved (--keep 0)"
        log(f"stopped at step {step} by {signalled}: {saved}")
        sys.exit(128 + signal.Signals[signalled])
    why = "the time budget is spent" if clock >= 1 else "--stop-after (--resume continues)" if step == stop else "done"
    log(f"training stops at step {step}: {why}")
    return State(model, opt_state, step)


def train(tcfg: TrainConfig, run: RunConfig, settings: upgen.UPGenConfig):
    """The whole run: its image tokenizer and token shards (shards.py), the model, the loop, upgen.eqx and samples.
    settings: the model's shape and objective; the tokenizers set its sizes (upgen.model_config)."""
    started = time.perf_counter()
    out, process, processes = Path(run.out), jax.process_index(), jax.process_count()
    log = open_log(out, started, process)
    saved, minutes = start_or_resume(tcfg, run, out, log)
    vq_cfg = vqgan.VQGANConfig(codebook_size=run.vqgan_codes)
    vq_tcfg = vqgan_train.VQGANTrainConfig(minutes=minutes * run.vqgan_share, train_pictures=run.vqgan_pictures)
    vq, vq_path = vqgan_train.image_tokenizer(out, run.vqgan, tcfg.images, vq_cfg, vq_tcfg, log)
    text_tokens = settings.text_tokens if saved is None else saved.mcfg.text_tokens
    folder = Path(run.shards or out / "shards")
    tokenizer, images, texts = shards.load_corpus(tcfg.images, tcfg.shapes, tcfg.text, tcfg.seed, vq_path, folder,
                                                  out, text_tokens, log, process=process, processes=processes)
    if saved is not None:
        if saved.tokenizer.words != tokenizer.words:
            raise ValueError(f"the shards in {folder} have another vocabulary than the run's")
        step, model, opt_state, mcfg = saved.step, saved.model, saved.opt_state, saved.mcfg
    else:
        mcfg = upgen.model_config(settings, vq.cfg, tokenizer)
        init_key = jax.random.split(jax.random.key(tcfg.seed))[0]
        step, (model, opt_state) = 0, init_state(mcfg, make_optimizer(tcfg), key=init_key)
    state = State(*replicate((model, opt_state), make_mesh()), step)
    log(f"UPGen {upgen.count_params(state.model) / 1e6:.2f}M params; {mcfg}")
    log(f"{tcfg}; {len(jax.devices())} devices, {processes} host(s); this host draws from "
        f"{sum(map(len, images))} pictures and {sum(map(len, texts))} texts (the captions when no --text)")
    end = started + 60 * minutes - FINISH_SECONDS - HELD_OUT_SECONDS * bool(tcfg.images) if minutes else None
    budget = Budget(time.perf_counter(), end, saved.progress if saved else 0.0)
    setup = Setup(tcfg, run, mcfg, tokenizer, (images, texts))
    model = local_copy(train_loop(state, setup, budget, log).model)
    if process == 0:
        upgen.save_upgen(out / "upgen.eqx", model, tokenizer)
        log(f"wrote {out / 'upgen.eqx'}")
        held_out, key = shards.held_out_rows(folder, HELD_OUT_PAIRS), jax.random.key(tcfg.seed)
        if tcfg.images and len(held_out):  # the shapes world has evaluate.py's own eval
            references = shards.held_out_rows(folder, evaluate.READER_PICTURES, training=True)
            for line in evaluate.held_out_lines(evaluate.held_out_eval(model, tokenizer, vq, held_out, references,
                                                                       sample.DecodeConfig(), key=key)):
                log(line)
        if run.samples:  # text -> image of a few captions no step trained on: a quick look at what it learnt
            prompts = evaluate.draw_captions(model, vq, tokenizer, held_out if len(held_out) else images[0],
                                             run.samples, out / "samples.png", key=key)
            log("samples.png shows, left to right: " + "; ".join(prompts))
    return model


# ---------------------------------------------------------------------------------------------------
# The command line: one flag per config field, its default the field's


def parse(argv):
    """-> (every flag's value by config field name, the names of the flags given on the command line)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    d, r, m = TrainConfig(), RunConfig(), upgen.UPGenConfig()
    g = p.add_argument_group("data")
    config.flag(g, d, "images", "image-caption pairs: folder of a.jpg + a.txt, .tar(s), globs, brace patterns")
    config.flag(g, d, "shapes", "shapes-world examples when --images is not given")
    config.flag(g, d, "text", "unpaired text: a .txt file or folder, one document per line")
    config.flag(g, d, "mix", "batch shares of paired, image-only, text-only", metavar=("PAIRED", "IMAGE", "TEXT"))
    config.flag(g, r, "vqgan", "image tokenizer (default: the shapes one, or for --images one trained on yours)")
    config.flag(g, r, "vqgan_codes", "codes of the image tokenizer trained on --images when no --vqgan is given")
    config.flag(g, r, "vqgan_share", "share of --minutes for training that tokenizer")
    config.flag(g, r, "vqgan_pictures", "pictures of --images that tokenizer trains on, a tenth held out")
    config.flag(g, r, "shards", "token shards (shards.py), tokenised into it first when missing (default: OUT/shards)")
    g = p.add_argument_group("model")
    for name, help in [("width", "transformer width"), ("depth", "transformer blocks"), ("heads", "attention heads"),
                       ("mlp", "MLP hidden units per block"), ("text_tokens", "text tokens per example"),
                       ("paired_text_weight", "loss weight of a masked caption token (image tokens weigh 1)"),
                       ("unpaired_text_weight", "loss weight of a masked token of text-only data")]:
        config.flag(g, m, name, help)
    g.add_argument("--paper-objective", action="store_true", help="the paper's exact objective: one mask ratio for "
                   "picture and caption, text weights 0.1 and 0.01 (overrides the two weights above)")
    config.flag(g, m, "compute_dtype", "matmul dtype (bfloat16 on accelerators)", choices=("float32", "bfloat16"))
    g = p.add_argument_group("optimization")
    config.flag(g, d, "steps", "total optimizer steps, 0 = as many as fit in --minutes (with --resume: the saved "
                             "run's)")
    for name, help in [("batch", "global batch size (all devices, all hosts)"), ("lr", "peak learning rate"),
                       ("warmup", "linear warmup steps"), ("weight_decay", "AdamW weight decay of the matrices"),
                       ("clip", "global gradient-norm clip"), ("seed", "seed of init, masks, batch order"),
                       ("accum", "micro-batches per step (gradient accumulation): --batch rows in 1/accum the memory"),
                       ("remat", "recompute each block's activations in the backward pass: less memory, more FLOPs")]:
        config.flag(g, d, name, help)
    g = p.add_argument_group("run")
    config.flag(g, r, "out", "run folder: vqgan.eqx, shards/, shapes/, state_<step>.eqx, upgen.eqx, train.log")
    config.flag(g, r, "minutes", f"wall-clock budget of the whole run (default {DEFAULT_MINUTES:g} with --images, "
                               "else none): the learning rate decays to it or to --steps, whichever comes first",
              type=float)
    config.flag(g, r, "resume", "continue from the newest state_<step>.eqx in --out with its saved settings; it may "
                              "change --steps, --keep, --save-every, --log-every, --samples, --lr, --warmup, "
                              "--weight-decay, --clip (and --minutes, --stop-after, the cluster flags), no other; on a "
                              "pod, --out must be a folder every host sees")
    config.flag(g, r, "stop_after", "stop after this many steps of this invocation (split a run into jobs; 0 = never)")
    config.flag(g, r, "keep", "state_<step>.eqx files to keep (0 = none, only upgen.eqx at the end)")
    config.flag(g, r, "save_every", "steps between state checkpoints")
    config.flag(g, r, "log_every", "steps between log lines")
    config.flag(g, r, "samples", "pictures drawn at the end from held-out captions, spread over the data (0 = none)")
    g = p.add_argument_group("clusters")
    config.flag(g, r, "tpu", "a TPU pod: jax.distributed.initialize() first, then require TPUs; run on every host")
    config.flag(g, r, "distributed", "join a multi-host run: a TPU pod, SLURM and Open MPI are found by JAX; for any "
                                   "other launcher give the three flags below; run on every host")
    config.flag(g, r, "coordinator", "HOST:PORT of process 0, with --distributed")
    config.flag(g, r, "processes", "processes in the run, with --coordinator")
    config.flag(g, r, "process_id", "this process's index in [0, --processes), with --coordinator")
    args = p.parse_args(argv)
    given = {k for k, v in vars(p.parse_args(argv, argparse.Namespace(**dict.fromkeys(vars(args))))).items()
             if v is not None}  # argparse leaves a flag's default unset when the namespace holds it already
    values = {**vars(args), **(upgen.PAPER_OBJECTIVE if args.paper_objective else {})}
    return values, given | (set(upgen.PAPER_OBJECTIVE) if args.paper_objective else set())


# --resume continues the saved run. It takes these flags of its own command line, given or not (how this invocation
# runs), and these when given, applied and logged (how long the run is, what it logs and keeps, the optimizer's
# knobs: a diverged run resumes from its last good state with a smaller --lr). Any other flag given (the model, the
# objective, the data, the batch, the seed) must equal the saved run's.
INVOCATION = {"out", "resume", "minutes", "stop_after", "tpu", "distributed", "coordinator", "processes",
              "process_id"}
MAY_CHANGE = {"steps", "keep", "save_every", "log_every", "samples", "lr", "warmup", "weight_decay", "clip", "accum",
              "remat"}


def resumed(values: dict, given: set, header: dict) -> dict:
    """The flags' values for --resume: the saved run's (its state file's header), with this command line's INVOCATION
    flags and the MAY_CHANGE flags it gives. A one-line error names every other given flag that differs."""
    saved = {**header["upgen"], **header["train"], **header["run"]}
    text = lambda v: " ".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)  # noqa: E731
    clash = [f"--{k.replace('_', '-')} {text(values[k])} (saved: {text(saved[k])})" for k in sorted(given)
             if k in saved and k not in INVOCATION | MAY_CHANGE and text(values[k]) != text(saved[k])]
    if clash:
        raise ValueError(f"--resume continues the saved run's model, objective and data, but {', '.join(clash)}: "
                         "drop these flags, or start a new run with another --out")
    return {**values, **saved, **{k: values[k] for k in INVOCATION | (given & MAY_CHANGE)}}


def join_cluster(run: RunConfig):
    """--tpu or --distributed: jax.distributed.initialize(), before anything else touches JAX."""
    flag = "--tpu" if run.tpu else "--distributed"
    explicit = dict(coordinator_address=run.coordinator, num_processes=run.processes, process_id=run.process_id)
    try:
        jax.distributed.initialize(**(explicit if run.coordinator else {}))
    except (ValueError, RuntimeError) as e:
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{flag}: could not join a multi-host run ({why}); give --coordinator HOST:PORT "
                         "--processes N --process-id I, or run without it") from None
    if run.tpu and jax.default_backend() != "tpu":
        raise ValueError(f"--tpu: JAX sees no TPU (backend {jax.default_backend()}); run without --tpu")


def main(argv=None):
    try:
        values, given = parse(argv)
        if values["resume"] and state_files(Path(values["out"])):
            values = resumed(values, given, checkpoint.read_header(state_files(Path(values["out"]))[-1]))
        tcfg = TrainConfig(**config.fields_of(TrainConfig, values))
        run = RunConfig(**config.fields_of(RunConfig, values))
        settings = upgen.UPGenConfig(**config.fields_of(upgen.UPGenConfig, values))
        if run.tpu or run.distributed:
            join_cluster(run)
        Path(run.out).mkdir(parents=True, exist_ok=True)
        with run_lock(Path(run.out)):
            return train(tcfg, run, settings)
    except (ValueError, OSError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
