"""Train UPGen, data parallel, from a laptop CPU to a TPU pod with the same code.

    python train.py                       # shapes world: image tokenizer, token shards, UPGen (~10 min, 2 cores)
    python train.py --images DIR --out runs/mine   # your image-caption pairs (a.jpg + a.txt)
    python train.py --resume              # continue the last run in --out exactly where it stopped
    python train.py --bench               # train step tokens/s and model FLOPs utilisation
    python train.py --tpu ...             # on every host of a TPU pod slice

One jitted step holds loss, gradient, clipping and AdamW. Every device gets a slice of the batch on a
'data' mesh axis; parameters and optimiser state are replicated. Read next: sample.py, probe.py.
"""
import argparse
import dataclasses
import itertools
import math
import os
import shutil
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

import data
import sample
import shards
import upgen
import vqgan
import vqgan_train

KINDS = (upgen.PAIRED, upgen.IMAGE_ONLY, upgen.TEXT_ONLY)
DEFAULT_MINUTES = 10.0  # the whole run's wall-clock budget when no step count is given
SIZING_STEPS = 20  # a budgeted run times its steps up to this one, then sets how many fit
FINISH_SECONDS = 20  # what a budgeted run keeps for after training (upgen.eqx, samples.png); it stops there


@dataclass(frozen=True)
class TrainConfig:
    images: str = ""                  # image-caption folder / .tar shard(s); "" = the shapes world
    shapes: int = 5000                # shapes-world examples when images == "" (encoding ~1 s per 100 on 2 cores)
    text: str = ""                    # unpaired text (.txt file or folder, one document per line); "" = none
    mix: tuple = (1.0, 0.0, 0.0)      # batch shares of paired, image-only and text-only examples (the paper's
    #                                   0.7, 0.15, 0.15 when a --text corpus is given; on shapes alone they cost steps)
    steps: int = 0                    # optimiser steps in the whole run; 0 = as many as fit in the time budget
    batch: int = 32                   # global batch (all devices, all hosts)
    lr: float = 3e-3                  # peak learning rate, reached after warmup, cosine-decayed to lr/10
    warmup: int = 50                  # linear warmup steps
    weight_decay: float = 0.05        # AdamW decay of weight matrices and embeddings (not of biases, norm scales)
    clip: float = 1.0                 # global gradient-norm clip
    seed: int = 0                     # model init, masks and batch order all follow from it


# ---------------------------------------------------------------------------------------------------
# Data: pictures and text -> token shards on disk once (shards.py), then batches drawn from them memory-mapped

SHAPES_VQGAN = Path(__file__).parent / "checkpoints/shapes/vqgan.eqx"  # knows the shapes world's colours only
TOKENIZER_PICTURES = 5000  # the sample of a user's pictures a tokenizer of their own trains on (~60 MB at 64x64)


def image_tokenizer(out: Path, given: str, images: str, minutes: float, log):
    """The frozen VQGAN, kept as out/vqgan.eqx: the one there, else a copy of `given`, else for the shapes world the
    shipped shapes tokenizer, else one trained on a sample of the run's own pictures in at most half the run's
    budget (0 = no budget): the shapes tokenizer would turn them into blobs of its six colours."""
    path = out / "vqgan.eqx"
    source = Path(given) if given else None if images else SHAPES_VQGAN
    if path.exists():
        log(f"image tokenizer: {path}, already in the run folder")
    elif source:
        log(f"image tokenizer: copying {source} to {path}")
        tmp = path.with_name(f"vqgan.eqx.{jax.process_index()}.tmp")  # hosts may share the folder
        shutil.copyfile(source, tmp)
        os.replace(tmp, path)
    else:
        if jax.process_count() > 1:
            raise ValueError(f"no image tokenizer at {path}: give --vqgan, or train one on one host first "
                             f"(python train.py --images {images} --out {out})")
        size = vqgan.VQGANConfig().image_size
        files = shards.input_files(images, shards.ShardsConfig.shard_size)
        decoded = (shards.decode_pair(*pair, size) for f in files for pair in shards.pairs(f))
        good = (picture for picture, _, why in decoded if not why)
        pictures = np.stack(list(itertools.islice(good, TOKENIZER_PICTURES)))  # (n, S, S, 3)
        held_out = pictures[:max(1, len(pictures) // 10)]  # (k, S, S, 3), never trained on
        log(f"image tokenizer: none given (--vqgan), training one on {len(pictures) - len(held_out)} of your "
            f"pictures into {path}")
        budget = vqgan_train.VQGANTrainConfig(max_minutes=minutes / 2 if minutes else None)
        train_pictures = pictures[len(held_out):] if len(pictures) > 1 else pictures
        vq = vqgan_train.train_vqgan(path, train=budget, images=train_pictures)
        again = vqgan.decode_tokens(vq, vqgan.encode_images(vq, held_out))
        log(f"image tokenizer: {path} reconstructs {len(held_out)} held-out pictures of yours at PSNR "
            f"{vqgan_train.psnr(held_out, again):.1f} dB")
    return vqgan.load_vqgan(path), path


def load_corpus(tcfg: TrainConfig, vq_path: Path, folder: Path, out: Path, text_tokens: int, log, *, process=0,
                processes=1):
    """-> (the text tokenizer of the shards, this process's image shards, its text shards), memory-mapped.

    Tokenises first what folder lacks (shards.py): each process only its own input files. The shapes world takes
    the same path as any dataset: rendered into out/shapes/ as .tar shards, then tokenised."""
    cfg = shards.ShardsConfig(text_tokens=text_tokens)
    source = tcfg.images
    if not source:
        tars = shards.render_shapes(out / "shapes", tcfg.shapes, tcfg.seed, cfg, process=process, processes=processes)
        source = f"{out / 'shapes'}/shapes-{{00000..{len(tars) - 1:05d}}}.tar"
    shards.tokenise(source, vq_path, folder, cfg, text=tcfg.text, process=process, processes=processes, log=log)
    return shards.open_shards(folder, vq_path, process, processes)


def kind_counts(batch: int, mix) -> tuple:
    """Splits a batch into per-kind counts in the mix proportions; the rounding remainder goes to paired."""
    counts = [int(batch * m / sum(mix)) for m in mix]
    counts[0] += batch - sum(counts)
    return tuple(counts)


def draw(arrays, n, rng):
    """n rows drawn with replacement, uniformly over all rows of some (memory-mapped) arrays -> (n, ...)."""
    ends = np.cumsum([len(a) for a in arrays])
    rows = rng.integers(ends[-1], size=n)
    which = np.searchsorted(ends, rows, side="right")
    out = np.empty((n, *arrays[0].shape[1:]), arrays[0].dtype)
    for i in np.unique(which):  # reads only the drawn rows' pages
        out[which == i] = arrays[i][rows[which == i] - ends[i] + len(arrays[i])]
    return out


def local_batch(corpus, step: int, counts, cfg: upgen.UPGenConfig, *, seed: int, process: int = 0):
    """This host's rows of step's batch: tokens int32 (b, L), kinds int32 (b,).

    corpus = (image shards (n_s, image_tokens + text_tokens), text shards (n_s, text_tokens)), this host's own.
    A pure function of (seed, step, process), drawn with replacement: a resumed run sees exactly the batches it
    would have seen, and no host reads another's data."""
    images, texts = corpus
    paired, image_only, text_only = counts
    rng = np.random.default_rng([seed, step, process])
    pictures = draw(images, paired + image_only, rng).astype(np.int32)  # (paired + image_only, Ni + Nt)
    codes, captions = pictures[:, :cfg.image_tokens], pictures[:paired, cfg.image_tokens:]
    tokens = np.concatenate([upgen.make_sequence(codes[:paired], captions, cfg),
                             upgen.make_sequence(codes[paired:], None, cfg),
                             upgen.make_sequence(None, draw(texts, text_only, rng).astype(np.int32), cfg)])
    return tokens, np.repeat(np.array(KINDS, np.int32), counts)


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


def host_copy(tree):
    """A replicated tree -> numpy on this host (every host holds a full copy), for saving."""
    return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)) if isinstance(x, jax.Array) else x, tree)


def make_optimizer(tcfg: TrainConfig):
    """Global-norm clipping, then AdamW's update before its learning rate: train_step multiplies by the
    rate, so the schedule is a plain function of the step whose length may be set after the run starts."""
    matrices = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)  # no decay on biases and norms
    return optax.chain(optax.clip_by_global_norm(tcfg.clip), optax.scale_by_adam(b1=0.9, b2=0.95),
                       optax.add_decayed_weights(tcfg.weight_decay, mask=matrices))


def learning_rate(step: int, tcfg: TrainConfig) -> float:
    """Linear warmup to tcfg.lr, then cosine decay to lr/10 at step tcfg.steps (0 = not known yet: the peak)."""
    if step < tcfg.warmup:
        return tcfg.lr * (step + 1) / tcfg.warmup
    progress = min(1.0, (step - tcfg.warmup) / max(1, tcfg.steps - tcfg.warmup)) if tcfg.steps else 0.0
    return tcfg.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * progress)))


@eqx.filter_jit(donate="all")
def train_step(model, opt_state, tokens, kinds, lr, key, optimizer, mesh):
    """One step: tokens (B, L) and kinds (B,) sharded on 'data', lr a float32 scalar -> updated model and
    state, loss, metrics."""
    replicated, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    model, opt_state = eqx.filter_shard((model, opt_state), replicated)
    tokens, kinds = eqx.filter_shard((tokens, kinds), sharded)
    grad_fn = eqx.filter_value_and_grad(upgen.loss_fn, has_aux=True)
    (loss, metrics), grads = grad_fn(model, tokens, kinds, key=key)  # XLA inserts the gradient all-reduce
    updates, opt_state = optimizer.update(grads, opt_state, eqx.filter(model, eqx.is_inexact_array))
    model = eqx.apply_updates(model, jax.tree.map(lambda u: -lr * u, updates))
    model, opt_state = eqx.filter_shard((model, opt_state), replicated)
    return model, opt_state, loss, metrics


@eqx.filter_jit
def init_state(mcfg, optimizer, *, key):
    """A fresh model and its optimiser state."""
    model = upgen.UPGen(mcfg, key=key)
    return model, optimizer.init(eqx.filter(model, eqx.is_inexact_array))


# ---------------------------------------------------------------------------------------------------
# Checkpoints: out/state_<step>.eqx holds everything --resume needs; out/upgen.eqx only the model


def save_state(out: Path, step, model, opt_state, mcfg, tcfg, tokenizer, keep: int):
    header = {"step": step, "upgen": dataclasses.asdict(mcfg), "train": dataclasses.asdict(tcfg),
              "tokenizer": dataclasses.asdict(tokenizer)}
    data.save_checkpoint(out / f"state_{step}.eqx", header, host_copy((model, opt_state)))
    for old in state_files(out)[:-keep]:
        old.unlink()


def state_files(out: Path):
    return sorted(out.glob("state_*.eqx"), key=lambda p: int(p.stem.split("_")[1]))


def train_config(fields: dict) -> TrainConfig:
    return TrainConfig(**{**fields, "mix": tuple(fields["mix"])})  # JSON turns the tuple into a list


class Saved(NamedTuple):
    """What a state_<step>.eqx holds."""
    step: int
    model: upgen.UPGen
    opt_state: optax.OptState
    mcfg: upgen.UPGenConfig
    tcfg: TrainConfig
    tokenizer: data.Tokenizer


def load_state(path: Path) -> Saved:
    def skeleton(header):
        mcfg, tcfg = upgen.UPGenConfig(**header["upgen"]), train_config(header["train"])
        return eqx.filter_eval_shape(init_state, mcfg, make_optimizer(tcfg), key=jax.random.key(0))
    header, (model, opt_state) = data.load_checkpoint(path, skeleton)
    return Saved(header["step"], model, opt_state, upgen.UPGenConfig(**header["upgen"]),
                 train_config(header["train"]), data.tokenizer_from_header(header["tokenizer"]))


# ---------------------------------------------------------------------------------------------------
# The run: configuration, then the loop, then the model and a few samples


def open_log(out: Path, started: float, process: int):
    """-> log(line): on process 0, prints the line after the seconds since `started` and appends it to train.log."""
    if process:
        return lambda line: None
    file = open(out / "train.log", "a")

    def log(line):
        line = f"[{time.perf_counter() - started:5.0f} s] {line}"
        tqdm.write(line)
        file.write(line + "\n")
        file.flush()
    return log


def check_config(tcfg: TrainConfig, minutes: float, args):
    """One-line errors for settings that cannot train."""
    problems = [f"--{name} {value:g} must be {rule}" for name, value, ok, rule in [
        ("log-every", args.log_every, args.log_every >= 1, "at least 1"),
        ("save-every", args.save_every, args.save_every >= 1, "at least 1"),
        ("stop-after", args.stop_after, args.stop_after >= 0, "at least 0 (0 runs to --steps)"),
        ("keep", args.keep, args.keep >= 0, "at least 0"),
        ("batch", tcfg.batch, tcfg.batch >= 1, "at least 1"),
        ("steps", tcfg.steps, tcfg.steps >= 0, "at least 0 (0 fills the time budget)"),
        ("lr", tcfg.lr, tcfg.lr > 0, "positive"), ("warmup", tcfg.warmup, tcfg.warmup >= 1, "at least 1"),
        ("minutes", minutes, minutes >= 0, "positive, or 0 for no budget"),
        ("clip", tcfg.clip, tcfg.clip > 0, "positive")] if not ok]
    if min(tcfg.mix) < 0 or sum(tcfg.mix) <= 0:
        problems.append(f"--mix {' '.join(map(str, tcfg.mix))}: give three shares >= 0, not all 0")
    if tcfg.text and not tcfg.mix[2]:
        problems.append("--text needs a text-only share in --mix, e.g. --mix 0.7 0.15 0.15 (the paper's)")
    if tcfg.batch % jax.device_count():
        problems.append(f"--batch {tcfg.batch} must be a multiple of the {jax.device_count()} devices")
    if not minutes and not tcfg.steps:
        problems.append("--minutes 0 needs --steps N: give the run a length or a time budget")
    if problems:
        raise ValueError(problems[0])


def run_config(args, out: Path, log):
    """-> (TrainConfig, the saved state when resuming else None, the run's budget in minutes, 0 = none).

    A budget applies when asked for, or when no step count is: then the loop times its steps and sets the step
    count, and with it the learning-rate schedule, to fill the budget."""
    if args.resume:
        if not state_files(out):
            raise ValueError(f"--resume: no state_<step>.eqx in {out}; run without --resume to start")
        saved = load_state(state_files(out)[-1])
        tcfg = dataclasses.replace(saved.tcfg, steps=args.steps or saved.tcfg.steps)
        log(f"resuming {state_files(out)[-1]} at step {saved.step}")
    else:
        if state_files(out):
            raise ValueError(f"{out} holds {state_files(out)[-1].name} of an earlier run: --resume continues it, "
                             f"or give another --out")
        saved, tcfg = None, TrainConfig(images=args.images, shapes=args.shapes, text=args.text, mix=tuple(args.mix),
                                        steps=args.steps or 0, batch=args.batch, lr=args.lr, warmup=args.warmup,
                                        weight_decay=args.weight_decay, clip=args.clip, seed=args.seed)
    if args.minutes is not None:
        minutes = args.minutes
    else:
        minutes = 0 if tcfg.steps else DEFAULT_MINUTES
    check_config(tcfg, minutes, args)
    if not minutes:
        log(f"no time budget: {tcfg.steps} steps")
    elif tcfg.steps:
        log(f"time budget: {minutes} min for the whole run; stops early at the budget, else after {tcfg.steps} steps")
    else:
        log(f"time budget: {minutes} min for the whole run (data, training, samples); the step count is set from "
            f"the measured step time")
    return tcfg, saved, minutes


def model_config(args, vq, tokenizer) -> upgen.UPGenConfig:
    """The transformer for this tokenizer pair, shaped and weighted by the command line."""
    objective = upgen.PAPER_OBJECTIVE if args.paper_objective else dict(
        paired_text_weight=args.paired_text_weight, unpaired_text_weight=args.unpaired_text_weight)
    return upgen.UPGenConfig(image_codes=vq.cfg.codebook_size, image_tokens=vq.cfg.tokens_per_side ** 2,
                             text_vocab=tokenizer.vocab_size, text_tokens=args.text_tokens, width=args.width,
                             depth=args.depth, heads=args.heads, mlp=args.mlp, compute_dtype=args.compute_dtype,
                             **objective)


@dataclass(frozen=True)
class Budget:
    """The run's wall clock: `minutes` (0 = none) from `started`, less FINISH_SECONDS kept for the end."""
    started: float
    minutes: float

    def seconds_left(self) -> float:
        return 60 * self.minutes - FINISH_SECONDS - (time.perf_counter() - self.started)

    def spent(self) -> bool:
        """Process 0's clock decides, so that every host stops at the same step: call it on every host."""
        return bool(self.minutes) and bool(on_every_host(np.array(self.seconds_left() < 0)))

    def steps_that_fit(self, step: int, step_seconds: float) -> int:
        """The step count that ends training when the budget is spent, at step_seconds a step (process 0's count:
        call it on every host)."""
        return int(on_every_host(np.array(step + max(0, int(self.seconds_left() / step_seconds)))))


def on_every_host(x):
    """Process 0's value of a small numpy array, on every host."""
    return multihost_utils.broadcast_one_to_all(x) if jax.process_count() > 1 else x


def log_metrics(pending, step, tcfg, mcfg, seconds, bar, log):
    """One log line: mean loss and accuracies of the steps since the last line, and their tokens/s."""
    losses, metrics = zip(*jax.device_get(pending))
    line = {"loss": np.mean(losses), **{k: np.mean([m[k] for m in metrics]) for k in metrics[0]}}
    if seconds is not None:  # the first interval holds the compilation, so it gives no speed
        line["tok/s"] = len(pending) * tcfg.batch * mcfg.seq_len / seconds
    bar.set_postfix({k: f"{v:.3g}" for k, v in line.items()})
    log(f"step {step} lr {learning_rate(step - 1, tcfg):.2e} " + " ".join(f"{k} {v:.4g}" for k, v in line.items()))


def write_samples(model, vq, tokenizer, prompts, path: Path, *, key):
    """Text -> image for a few training captions: one PNG, a quick look at what the model learnt."""
    tokens = jnp.concatenate([sample.inputs(model.cfg, 1, text=tokenizer.encode(p)) for p in prompts])  # (B, L)
    states = sample.generate(model, tokens, sample.DecodeConfig(), key=key)  # (T, B, L)
    sample.save_grid(sample.pictures(vq, states[-1], model.cfg)[None], path)


def train(args):
    started = time.perf_counter()
    out, process, processes = Path(args.out), jax.process_index(), jax.process_count()
    out.mkdir(parents=True, exist_ok=True)
    log = open_log(out, started, process)
    tcfg, saved, minutes = run_config(args, out, log)
    budget = Budget(started, minutes)
    vq, vq_path = image_tokenizer(out, args.vqgan, tcfg.images, minutes, log)
    text_tokens = args.text_tokens if saved is None else saved.mcfg.text_tokens
    shards_folder = Path(args.shards or out / "shards")
    tokenizer, images, texts = load_corpus(tcfg, vq_path, shards_folder, out, text_tokens, log, process=process,
                                           processes=processes)
    optimizer, mesh = make_optimizer(tcfg), make_mesh()
    init_key, train_key = jax.random.split(jax.random.key(tcfg.seed))
    if saved is not None:
        if saved.tokenizer.words != tokenizer.words:
            raise ValueError(f"the shards in {shards_folder} have another vocabulary than the run's")
        start, model, opt_state, mcfg = saved.step, saved.model, saved.opt_state, saved.mcfg
    else:
        mcfg = model_config(args, vq, tokenizer)
        start, (model, opt_state) = 0, init_state(mcfg, optimizer, key=init_key)
    model, opt_state = replicate((model, opt_state), mesh)
    counts = kind_counts(tcfg.batch // processes, tcfg.mix)
    log(f"UPGen {upgen.count_params(model) / 1e6:.2f}M params; {mcfg}")
    log(f"{tcfg}; {len(jax.devices())} devices, {processes} host(s); this host draws from "
        f"{sum(map(len, images))} pictures and {sum(map(len, texts))} texts (the captions when no --text)")

    end = min(start + args.stop_after if args.stop_after else math.inf, tcfg.steps or math.inf)
    bar = tqdm(initial=start, total=tcfg.steps or None, disable=process != 0, desc="train")
    step, pending, clock, sizing_clock = start, [], None, None
    while step < end:
        tokens, kinds = global_batch(mesh, *local_batch((images, texts), step, counts, mcfg, seed=tcfg.seed,
                                                          process=process))
        lr, key = jnp.float32(learning_rate(step, tcfg)), jax.random.fold_in(train_key, step)
        model, opt_state, loss, metrics = train_step(model, opt_state, tokens, kinds, lr, key, optimizer, mesh)
        pending.append((loss, metrics))
        step += 1
        bar.update()
        if not tcfg.steps and step - start == SIZING_STEPS // 4:  # the steps before this hold the compilation
            jax.block_until_ready(loss)
            sizing_clock = time.perf_counter()
        if not tcfg.steps and step - start == SIZING_STEPS:  # the measured step time sets the run's length
            jax.block_until_ready(loss)
            step_seconds = (time.perf_counter() - sizing_clock) / (SIZING_STEPS - SIZING_STEPS // 4)
            tcfg = dataclasses.replace(tcfg, steps=budget.steps_that_fit(step, step_seconds))
            end, bar.total = min(end, tcfg.steps), tcfg.steps
            log(f"{step_seconds * 1e3:.0f} ms/step: {tcfg.steps} steps fill the {minutes}-minute budget")
        out_of_time = False
        if step % args.log_every == 0 or step == end:
            out_of_time = step < end and budget.spent()
            log_metrics(pending, step, tcfg, mcfg, None if clock is None else time.perf_counter() - clock, bar, log)
            pending, clock = [], time.perf_counter()
        if (step % args.save_every == 0 or step == end or out_of_time) and args.keep > 0 and process == 0:
            save_state(out, step, model, opt_state, mcfg, tcfg, tokenizer, args.keep)
        if out_of_time:
            log(f"stopping at step {step}: the {minutes}-minute budget is spent (--resume continues)")
            break
    bar.close()

    model = host_copy(model)
    if process == 0:
        upgen.save_upgen(out / "upgen.eqx", model, tokenizer)
        log(f"wrote {out / 'upgen.eqx'}")
        if args.samples:
            prompts = [tokenizer.decode(row[mcfg.image_tokens:]) for row in images[0][:args.samples]]
            write_samples(model, vq, tokenizer, prompts, out / "samples.png", key=jax.random.key(tcfg.seed))
            log("samples.png shows, left to right: " + "; ".join(prompts))
    return model


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d, m = TrainConfig(), upgen.UPGenConfig(image_codes=0, text_vocab=0)
    g = p.add_argument_group("data")
    g.add_argument("--images", default=d.images, help="image-caption pairs: folder of a.jpg + a.txt, a .tar, or "
                                                      "comma-separated .tar globs or brace patterns (default: shapes)")
    g.add_argument("--shapes", type=int, default=d.shapes, help="shapes-world examples when --images is not given")
    g.add_argument("--text", default=d.text, help="unpaired text: a .txt file or folder, one document per line")
    g.add_argument("--mix", type=float, nargs=3, default=d.mix, metavar=("PAIRED", "IMAGE", "TEXT"),
                   help="batch shares of paired, image-only and text-only examples")
    g.add_argument("--vqgan", default="", help="image tokenizer to copy into --out when it has none (default: the "
                                               "shapes one for the shapes world, one trained on yours for --images)")
    g.add_argument("--shards", default="", help="token shards (shards.py), tokenised into it first when missing "
                                                "(default: OUT/shards)")
    g = p.add_argument_group("model")
    g.add_argument("--width", type=int, default=m.width, help="transformer width")
    g.add_argument("--depth", type=int, default=m.depth, help="transformer blocks")
    g.add_argument("--heads", type=int, default=m.heads, help="attention heads")
    g.add_argument("--mlp", type=int, default=m.mlp, help="MLP hidden units per block")
    g.add_argument("--text-tokens", type=int, default=m.text_tokens, help="text tokens per example")
    g.add_argument("--paired-text-weight", type=float, default=m.paired_text_weight,
                   help="loss weight of a masked caption token (image tokens weigh 1)")
    g.add_argument("--unpaired-text-weight", type=float, default=m.unpaired_text_weight,
                   help="loss weight of a masked token of text-only data")
    g.add_argument("--paper-objective", action="store_true",
                   help="the paper's exact objective: one mask ratio for picture and caption, text weights 0.1 and "
                        "0.01 (overrides the two weights above)")
    g.add_argument("--compute-dtype", default=m.compute_dtype, choices=("float32", "bfloat16"),
                   help="matmul dtype (bfloat16 on accelerators)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--steps", type=int, default=None,
                   help="total optimiser steps (default: as many as fit in --minutes; with --resume, the saved run's)")
    g.add_argument("--batch", type=int, default=d.batch, help="global batch size (all devices, all hosts)")
    g.add_argument("--lr", type=float, default=d.lr, help="peak learning rate")
    g.add_argument("--warmup", type=int, default=d.warmup, help="linear warmup steps")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay, help="AdamW weight decay of the matrices")
    g.add_argument("--clip", type=float, default=d.clip, help="global gradient-norm clip")
    g.add_argument("--seed", type=int, default=d.seed, help="seed of the init, the masks and the batch order")
    g = p.add_argument_group("run")
    g.add_argument("--out", default="runs/shapes", help="run folder: vqgan.eqx, shards/, shapes/ (the shapes "
                                                         "world's .tar), state_<step>.eqx, upgen.eqx, train.log")
    g.add_argument("--minutes", type=float, default=None,
                   help=f"wall-clock budget of the whole run: without --steps, the run sets its step count to fill it"
                        f" (default {DEFAULT_MINUTES:g}); past it, save and stop (0 = none)")
    g.add_argument("--resume", action="store_true",
                   help="continue from the newest state_<step>.eqx in --out (its saved config); on a pod, --out "
                        "must be a folder every host sees")
    g.add_argument("--stop-after", type=int, default=0,
                   help="stop after this many steps of this invocation (split a run into jobs; 0 = run to --steps)")
    g.add_argument("--keep", type=int, default=2,
                   help="state_<step>.eqx files to keep (0 = none, only upgen.eqx at the end)")
    g.add_argument("--save-every", type=int, default=500, help="steps between state checkpoints")
    g.add_argument("--log-every", type=int, default=50, help="steps between log lines")
    g.add_argument("--samples", type=int, default=8,
                   help="pictures drawn at the end from the first training captions (0 = none)")
    g = p.add_argument_group("pods")
    g.add_argument("--tpu", action="store_true",
                   help="multi-host TPU: jax.distributed.initialize() first; run on every host")
    g = p.add_argument_group("benchmark")
    g.add_argument("--bench", action="store_true",
                   help="print the train step's tokens/s and MFU beside a reference step (bench.py)")
    g.add_argument("--bench-steps", type=int, default=20, help="timed steps per --bench config")
    g.add_argument("--peak-flops", type=float, default=0.0,
                   help="peak FLOP/s of one device, for MFU (default: a measured matmul; e.g. 989e12 for an H100's "
                        "bf16)")
    args = p.parse_args(argv)
    try:
        if args.tpu:
            try:
                jax.distributed.initialize()
            except (ValueError, RuntimeError) as e:
                raise ValueError(f"--tpu: no TPU pod found here ({e}); run without --tpu") from None
            if jax.default_backend() != "tpu":
                raise ValueError(f"--tpu: JAX sees no TPU (backend {jax.default_backend()}); run without --tpu")
        if args.bench:
            import bench  # bench.py builds on this file's step
            return bench.run(args)
        return train(args)
    except (ValueError, OSError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
