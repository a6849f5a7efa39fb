"""Train UPGen: the step and the loop, data parallel from a laptop CPU to a TPU pod with the same code.

    python train.py                                 # the shapes world: 5000 steps, the same model every time
    python train.py --images DIR --out runs/mine    # your image-caption pairs (a.jpg + a.txt)
    python train.py --resume                        # continue the run in --out where it stopped
    python train.py --tpu ...                       # on every host of a TPU pod slice

One jitted step holds the objective (upgen.loss_fn), its gradient, clipping and AdamW; each device gets a slice of
the batch on a 'data' mesh axis, parameters and optimizer state are replicated. Around the loop: the data
(shards.py), the cluster (cluster.py), --resume (resume.py), the run's record (logbook.py). Read next: shapes.py.
"""
import argparse
import dataclasses
import math
import signal
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
from jax.sharding import NamedSharding, PartitionSpec as P
from tqdm import tqdm

import checkpoint
import cluster
import config
import logbook
import resume
import sample
import shards
import upgen
import vocab

VALIDATION_PAIRS = 128  # held-out pairs of the validation loss: the compute of ~1.3 steps, ~3% of 50 steps
VALIDATION_SEED = 20261203  # the same tokens hidden at every log point, so the points of a run compare
FOLDER_STEPS = 12000  # --steps of a run on --images: a folder's words and pictures take longer than the shapes world's


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 5000                 # optimizer steps (12000 with --images); the learning rate decays over them
    batch: int = 32                   # global batch (all devices, all hosts)
    lr: float = 3e-3                  # peak learning rate, reached after warmup, cosine-decayed to lr/10
    warmup: int = 50                  # linear warmup steps
    weight_decay: float = 0.05        # AdamW decay of weight matrices and embeddings (not of biases, norm scales)
    clip: float = 1.0                 # global gradient-norm clip
    accum: int = 1                    # micro-batches per step, their gradients averaged: --batch rows in 1/accum
    #                                   the activation memory (the paper's batch 4096 on fewer devices)
    remat: bool = False               # recompute each block's activations in the backward pass: less memory, ~1/3
    #                                   more FLOPs. A training choice, not the model's: upgen.eqx never records it
    seed: int = 0                     # seed of init, masks, batch order and the shapes world

    def __post_init__(self):
        config.check(self, [(name, getattr(self, name) >= 1, "must be at least 1") for name in
                            ("steps", "batch", "warmup", "accum")] + [
            ("lr", self.lr > 0, "must be positive"), ("clip", self.clip > 0, "must be positive"),
            ("weight_decay", self.weight_decay >= 0, "must be at least 0"),
            ("batch", self.batch % self.accum == 0, f"must be a multiple of --accum {self.accum}")])


@dataclass(frozen=True)
class RunConfig:
    out: str = "runs/shapes"          # run folder: vqgan.eqx, shards/, state_<step>.eqx, upgen.eqx, train.log, curves
    resume: bool = False              # continue from the newest readable state_<step>.eqx in --out, with its settings
    stop_after: int = 0               # steps of this invocation, then save and stop (0 = run to the end)
    keep: int = 2                     # state_<step>.eqx files kept (0 = none, only upgen.eqx at the end)
    save_every: int = 500             # steps between state files
    log_every: int = 50               # steps between log points (train.log, metrics.jsonl, curves.png)
    samples: int = 8                  # pictures drawn at the end from held-out captions (0 = none)

    def __post_init__(self):
        config.check(self, [(name, getattr(self, name) >= 1, "must be at least 1") for name in ("save_every",
                            "log_every")] + [(name, getattr(self, name) >= 0, "must be at least 0") for name in
                                             ("stop_after", "keep", "samples")])


# ---------------------------------------------------------------------------------------------------
# The step: data parallel over a 'data' mesh axis


def make_optimizer(tcfg: TrainConfig):
    """Global-norm clipping, then AdamW's update before its learning rate: train_step multiplies by the rate."""
    matrices = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)  # noqa: E731  (no decay on biases, norms)
    return optax.chain(optax.clip_by_global_norm(tcfg.clip), optax.scale_by_adam(b1=0.9, b2=0.95),
                       optax.add_decayed_weights(tcfg.weight_decay, mask=matrices))


def learning_rate(step: int, tcfg: TrainConfig) -> float:
    """Linear warmup over tcfg.warmup steps, times a cosine from tcfg.lr at step 0 to lr/10 at tcfg.steps."""
    warmup = min(1.0, (step + 1) / tcfg.warmup)
    return tcfg.lr * warmup * (0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, step / tcfg.steps))))


class Trainer(NamedTuple):
    """The step's fixed parts, static under jit."""
    optimizer: optax.GradientTransformation
    mesh: jax.sharding.Mesh
    accum: int = 1
    remat: bool = False


def make_trainer(tcfg: TrainConfig) -> Trainer:
    return Trainer(make_optimizer(tcfg), cluster.make_mesh(), tcfg.accum, tcfg.remat)


@eqx.filter_jit(donate="all")
def train_step(params, batch, lr, key, trainer: Trainer):
    """One step: params = (model, opt_state), replicated; batch = (tokens (B, L), kinds (B,)) sharded on 'data'; lr a
    float32 scalar -> (updated params, loss, metrics: accuracies, losses and the gradient's norm before clipping)."""
    replicated = NamedSharding(trainer.mesh, P())
    model, opt_state = eqx.filter_shard(params, replicated)
    (loss, metrics), grads = accumulated_grad(model, eqx.filter_shard(batch, NamedSharding(trainer.mesh, P("data"))),
                                              trainer, key=key)  # XLA all-reduces the gradients
    metrics = {**metrics, "grad_norm": optax.tree.norm(grads)}
    updates, opt_state = trainer.optimizer.update(grads, opt_state, eqx.filter(model, eqx.is_inexact_array))
    model = eqx.apply_updates(model, jax.tree.map(lambda u: -lr * u, updates))
    return eqx.filter_shard((model, opt_state), replicated), loss, metrics


def accumulated_grad(model, batch, trainer: Trainer, *, key):
    """upgen.loss_fn and its gradient, averaged over trainer.accum micro-batches of B / accum rows in a lax.scan:
    micro-batch i is rows i, i + accum, ... and is masked with fold_in(key, i) -> ((loss, metrics), grads)."""
    (tokens, kinds), accum, mesh = batch, trainer.accum, trainer.mesh
    if (tokens.shape[0] // accum) % mesh.size:
        raise ValueError(f"--batch {tokens.shape[0]} over --accum {accum} micro-batches is {tokens.shape[0] // accum} "
                         f"rows, which must be a multiple of the {mesh.size} devices")
    objective = eqx.filter_value_and_grad(lambda m, t, k, key: upgen.loss_fn(m, t, k, key=key, remat=trainer.remat),
                                          has_aux=True)
    # Row i goes to micro-batch i % accum: each device's rows split among the micro-batches, so every micro-batch
    # is spread over all devices and none waits for rows from another device.
    split = lambda x: jnp.swapaxes(x.reshape(-1, accum, *x.shape[1:]), 0, 1)  # noqa: E731  (accum, B / accum, ...)
    micro = eqx.filter_shard((split(tokens), split(kinds)), NamedSharding(mesh, P(None, "data")))
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(accum))

    def add(grads, inputs):
        value, more = objective(model, *inputs)
        return jax.tree.map(jnp.add, grads, more), value

    zeros = jax.tree.map(jnp.zeros_like, eqx.filter(model, eqx.is_inexact_array))
    grads, values = jax.lax.scan(add, zeros, (*micro, keys))  # values: (accum,) each
    return jax.tree.map(lambda x: x.mean(0), values), jax.tree.map(lambda g: g / accum, grads)


@eqx.filter_jit
def init_state(mcfg, optimizer, *, key, codebook=None):
    """A fresh model (its image codes' rows from the tokenizer's codebook, when given) and its optimizer state."""
    model = upgen.UPGen(mcfg, key=key, codebook=codebook)
    return model, optimizer.init(eqx.filter(model, eqx.is_inexact_array))


# ---------------------------------------------------------------------------------------------------
# The state: out/state_<step>.eqx holds everything --resume needs; out/upgen.eqx only the model


class State(NamedTuple):
    model: upgen.UPGen
    opt_state: optax.OptState
    step: int


def save_state(state: State, header: dict, run: RunConfig):
    """out/state_<step>.eqx: the state and the run's configs (header); keeps the newest run.keep."""
    out = Path(run.out)
    checkpoint.save_checkpoint(out / f"state_{state.step}.eqx", {"step": state.step, **header},
                               cluster.local_copy((state.model, state.opt_state)))
    for old in resume.state_files(out)[:-run.keep]:
        old.unlink()


def load_state(path: Path) -> tuple[dict, State]:
    """A state_<step>.eqx -> (its header, the state)."""
    configs = lambda h: (upgen.UPGenConfig(**h["upgen"]), TrainConfig(**h["train"]))  # noqa: E731
    header, (model, opt_state) = checkpoint.load_checkpoint(path, "train", lambda h: eqx.filter_eval_shape(
        init_state, configs(h)[0], make_optimizer(configs(h)[1]), key=jax.random.key(0)))
    return header, State(model, opt_state, header["step"])


@eqx.filter_jit
def validation_loss(model, rows):
    """The objective on held-out pairs rows (n, Ni + Nt), the same tokens hidden at every call -> the mean
    cross-entropy of their masked image tokens and of their masked caption tokens."""
    cfg = model.cfg
    tokens = upgen.make_sequence(rows[:, :cfg.image_tokens], rows[:, cfg.image_tokens:], cfg)  # (n, L)
    kinds = jnp.full(len(rows), upgen.PAIRED)
    _, metrics = upgen.loss_fn(model, tokens, kinds, key=jax.random.key(VALIDATION_SEED))
    return {"val_image_loss": metrics["image_loss"], "val_text_loss": metrics["text_loss"]}


# ---------------------------------------------------------------------------------------------------
# The loop


def train_loop(state: State, tcfg: TrainConfig, run: RunConfig, batch_at, held_out, save, log):
    """Steps to tcfg.steps, or run.stop_after steps of this call, or a stop signal -> (state, the signal's name or
    ""). batch_at(step): this host's rows of the step's batch. Every run.log_every steps process 0 logs the
    interval's figures and the validation loss of held_out; every run.save_every steps save(state), once the loss
    is known to be finite."""
    trainer, process, out = make_trainer(tcfg), jax.process_index(), Path(run.out)
    train_key = jax.random.split(jax.random.key(tcfg.seed))[1]
    stop = min(tcfg.steps, state.step + run.stop_after) if run.stop_after else tcfg.steps
    (model, opt_state, step), pending, since, signalled = state, [], time.perf_counter(), ""
    bar = tqdm(initial=step, total=tcfg.steps, disable=process != 0, desc="train")
    with cluster.stop_signals() as stopping:
        while step < stop and not signalled:
            lr, batch = learning_rate(step, tcfg), cluster.global_batch(trainer.mesh, *batch_at(step))
            (model, opt_state), loss, metrics = train_step((model, opt_state), batch, jnp.float32(lr),
                                                           jax.random.fold_in(train_key, step), trainer)
            pending.append((loss, metrics))
            step, signalled = step + 1, stopping(step + 1)
            bar.update()
            at_save = step % run.save_every == 0 or step == stop or signalled
            if step % run.log_every == 0 or at_save:
                figures = interval_figures(pending, out, step)
                figures.update(validation_loss(cluster.local_copy(model), held_out) if len(held_out) else {})
                figures["tok/s"] = len(pending) * batch[0].size / (time.perf_counter() - since)  # all hosts
                bar.set_postfix({k: f"{v:.3g}" for k, v in figures.items()})
                log(f"step {step} lr {lr:.2e} " + " ".join(f"{k} {float(v):.4g}" for k, v in figures.items()))
                if process == 0:
                    logbook.record(out, step, figures)
                pending, since = [], time.perf_counter()
            if at_save and run.keep and process == 0:
                save(State(model, opt_state, step))
    bar.close()
    return State(model, opt_state, step), signalled


def interval_figures(pending, out: Path, step: int) -> dict:
    """The mean loss, accuracies and gradient norm of the steps since the last log point; a loss or gradient that is
    not finite stops the run here, before anything is saved from its weights."""
    losses, metrics = zip(*jax.device_get(pending))
    figures = {"loss": np.mean(losses), **{k: np.mean([m[k] for m in metrics]) for k in metrics[0]}}
    if not (np.isfinite(figures["loss"]) and np.isfinite(figures["grad_norm"])):
        raise ValueError(resume.diverged(out, step, figures["loss"], figures["grad_norm"]))
    return figures


def train(tcfg: TrainConfig, run: RunConfig, dcfg: shards.DataConfig, settings: upgen.UPGenConfig, log, saved=None):
    """The whole run: its data (shards.prepare), the model (saved: (header, State) to resume), the loop, then
    upgen.eqx and samples.png. settings: the model's shape and objective; the tokenizers set its sizes."""
    out, process, processes = Path(run.out), jax.process_index(), jax.process_count()
    vq, tokenizer, images, texts = shards.prepare(dcfg, out, settings.text_tokens, tcfg.seed, log, process=process,
                                                  processes=processes)
    folder = Path(dcfg.shards or out / "shards")
    if saved is None:
        mcfg = upgen.model_config(settings, vq.cfg, tokenizer)
        state = State(*init_state(mcfg, make_optimizer(tcfg), key=jax.random.split(jax.random.key(tcfg.seed))[0],
                                  codebook=vq.quantizer.codebook), 0)
    elif vocab.tokenizer_from_header(saved[0]["tokenizer"]).words != tokenizer.words:
        raise ValueError(f"the shards in {folder} have another vocabulary than the saved run's")
    else:
        state, mcfg = saved[1], saved[1].model.cfg
    state = State(*cluster.replicate(state[:2], cluster.make_mesh()), state.step)
    log(f"UPGen {upgen.count_params(state.model) / 1e6:.2f}M params; {mcfg}")
    log(f"{tcfg}; {len(jax.devices())} devices, {processes} host(s); this host draws from "
        f"{sum(map(len, images))} pictures and {sum(map(len, texts))} texts (the captions when no --text)")
    counts = shards.kind_counts(tcfg.batch // processes, dcfg.mix)
    batch_at = lambda step: shards.local_batch((images, texts), step, counts, mcfg, seed=tcfg.seed,  # noqa: E731
                                               process=process)
    held_out = [] if process else shards.held_out_rows(folder, VALIDATION_PAIRS)
    header = {k: dataclasses.asdict(v) for k, v in
              {"upgen": mcfg, "train": tcfg, "run": run, "data": dcfg, "tokenizer": tokenizer}.items()}
    state, signalled = train_loop(state, tcfg, run, batch_at, held_out, lambda s: save_state(s, header, run), log)
    if signalled:
        saved = f"state_{state.step}.eqx saved; --resume continues" if run.keep else "nothing saved (--keep 0)"
        log(f"stopped at step {state.step} by {signalled}: {saved}")
        sys.exit(128 + signal.Signals[signalled])
    log(f"training stops at step {state.step}" + ("" if state.step == tcfg.steps else ": --resume continues"))
    model = cluster.local_copy(state.model)
    if process == 0:
        upgen.save_upgen(out / "upgen.eqx", model, tokenizer)
        log(f"wrote {out / 'upgen.eqx'}" + (f"; held-out figures: python evaluate.py --ckpt {out}" if dcfg.images
                                            else ""))
        if run.samples:  # text -> image of captions no step trained on: a quick look at what it learnt
            prompts = sample.draw_captions(model, vq, tokenizer, held_out if len(held_out) else images[0],
                                           run.samples, out / "samples.png", key=jax.random.key(tcfg.seed))
            log("samples.png shows, left to right: " + "; ".join(prompts))
    return model


# ---------------------------------------------------------------------------------------------------
# The command line: one flag per config field, its default the field's, its help the field's comment

MODEL_FLAGS = ("width", "depth", "heads", "mlp", "text_tokens", "paired_text_weight", "unpaired_text_weight",
               "keep_whole", "compute_dtype")


def parse(argv):
    """-> (every flag's value by config field name, the names of the flags given on the command line)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    for title, cfg, names in [("data", shards.DataConfig(), None), ("model", upgen.UPGenConfig(), MODEL_FLAGS),
                              ("training", TrainConfig(), None), ("run", RunConfig(), None),
                              ("cluster", cluster.ClusterConfig(), None)]:
        group = p.add_argument_group(title)
        for name in names or [f.name for f in dataclasses.fields(cfg)]:
            config.flag(group, cfg, name, **{"mix": dict(metavar=("PAIRED", "IMAGE", "TEXT")),
                                             "compute_dtype": dict(choices=("float32", "bfloat16"))}.get(name, {}))
    p.add_argument("--paper-objective", action="store_true", help="the paper's exact objective: one mask ratio for "
                   "picture and caption, text weights 0.1 and 0.01 (overrides --keep-whole and the two weights)")
    args = p.parse_args(argv)
    given = {k for k, v in vars(p.parse_args(argv, argparse.Namespace(**dict.fromkeys(vars(args))))).items()
             if v is not None}  # argparse leaves a flag's default unset when the namespace holds it already
    paper = upgen.PAPER_OBJECTIVE if args.paper_objective else {}
    folder = {"steps": FOLDER_STEPS} if args.images and "steps" not in given else {}
    return {**vars(args), **folder, **paper}, given | set(paper)


def main(argv=None):
    ccfg = None
    try:
        values, given = parse(argv)
        configs = lambda v: [cls(**config.fields_of(cls, v)) for cls in  # noqa: E731
                             (TrainConfig, RunConfig, shards.DataConfig, upgen.UPGenConfig, cluster.ClusterConfig)]
        tcfg, run, dcfg, settings, ccfg = configs(values)  # checks every flag before anything starts
        cluster.join(ccfg)
        out = Path(run.out)
        out.mkdir(parents=True, exist_ok=True)
        with cluster.run_lock(out):
            log = logbook.open_log(out, jax.process_index())
            saved = resume.start(out, run.resume, load_state, log)
            if saved:
                values = resume.resumed(values, given, saved[0], log)
                tcfg, run, dcfg, settings, _ = configs(values)
            if tcfg.batch % jax.device_count():
                raise ValueError(f"--batch {tcfg.batch} must be a multiple of the {jax.device_count()} devices")
            return train(tcfg, run, dcfg, settings, log, saved)
    except (ValueError, OSError, jax.errors.JaxRuntimeError) as e:
        if ccfg:
            cluster.explain(e, ccfg)
        sys.exit(f"error: {str(e).splitlines()[0] if str(e).strip() else type(e).__name__}")


if __name__ == "__main__":
    main()
