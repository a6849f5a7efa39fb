"""Linear probe: what a frozen UPGen has learned about images.

The paper's test of the representation: freeze the model, give it images alone (PAD in every text
slot), mean-pool each layer's output over the image positions, concatenate the layers, and train a
linear softmax classifier on one split, scored on a held-out one. The same probe on a randomly
initialised model of the same config and on raw pixels, printed beside it, shows what training added.

    python probe.py                              # shapes world: shape, colour, size, position
    python probe.py --folder pets/ --layer -1    # your own images, one subfolder per class

Read upgen.py (the model) and train.py (how checkpoints/shapes is made) first.
Read next: bench.py.
"""
import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import equinox as eqx
import jax
import numpy as np
import optax

import config
import data
import evaluate
import shapes
import shards
from upgen import UPGen, load_run, make_sequence
from vqgan import encode_images


@dataclass(frozen=True)
class ProbeConfig:
    epochs: int = 30              # passes over the training split
    batch_size: int = 128         # examples per AdamW step (and per jitted feature batch)
    learning_rate: float = 1e-2   # AdamW step size, on standardised features
    weight_decay: float = 1e-4    # AdamW's decoupled weight decay on the classifier
    test_fraction: float = 0.2    # share of the examples held out for scoring

    def __post_init__(self):
        config.check(self, [(name, getattr(self, name) >= 1, "must be at least 1") for name in ("epochs", "batch_size")]
                     + [("learning_rate", self.learning_rate > 0, "must be positive"), ("weight_decay",
                         self.weight_decay >= 0, "must be at least 0"), ("test_fraction", 0 < self.test_fraction < 1,
                                                                          "must be in (0, 1)")])


# ----------------------------------------------------------------------------------------------
# Features, computed once per model in fixed-size jitted batches


@eqx.filter_jit
def pooled_layers(model: UPGen, image_ids):
    """Image codes int32 (B, Ni) -> each layer's mean over the image positions (B, depth, D)."""
    tokens = make_sequence(image_ids, None, model.cfg)                       # (B, L), PAD in text slots
    _, hiddens = jax.vmap(lambda t: model(t, hidden=True))(tokens)           # (B, depth, L, D)
    return hiddens[:, :, : model.cfg.image_tokens].mean(axis=2)              # (B, depth, D)


def model_features(model: UPGen, image_ids, layer, batch_size):
    """-> float32 (n, depth * D), all layers concatenated, or (n, D) of one layer (negative counts back)."""
    pooled = data.in_batches(lambda ids, _: pooled_layers(model, ids), image_ids, batch_size,
                        key=jax.random.key(0))  # (n, depth, D)
    return pooled.reshape(len(pooled), -1) if layer is None else pooled[:, layer]


def pixel_features(images):
    """uint8 (n, S, S, 3) -> float32 (n, s*s*3), average-pooled to at most 64x64 to bound the size."""
    n, size = images.shape[:2]
    f = max(1, size // 64)
    side = size // f
    pooled = images[:, : side * f, : side * f].reshape(n, side, f, side, f, 3).mean(axis=(2, 4))
    return (pooled / 255.0).reshape(n, -1).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# The linear classifier


def linear_probe(x_train, y_train, x_test, y_test, n_classes, cfg: ProbeConfig, *, key):
    """Softmax regression with AdamW on standardised features x (n, F), one per task of labels y (n, T)
    with n_classes[t] classes -> held-out accuracy per task. The tasks share no weights (one slice of
    the columns each), so training them together is the same as training them one by one, only faster."""
    # Standardise with training statistics: layers differ in scale by orders of magnitude, and one
    # learning rate should suit every layer, the concatenation and raw pixels alike.
    mean, std = x_train.mean(axis=0), x_train.std(axis=0) + 1e-6
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    ends = np.cumsum(n_classes)
    tasks = [slice(end - n, end) for n, end in zip(n_classes, ends)]  # each task's columns of the logits
    params = (np.zeros((x_train.shape[1], ends[-1]), np.float32), np.zeros(ends[-1], np.float32))
    optimiser = optax.adamw(cfg.learning_rate, weight_decay=cfg.weight_decay)
    opt_state = optimiser.init(params)

    def loss(params, x, y):
        logits = x @ params[0] + params[1]                                   # (B, sum of n_classes)
        return sum(optax.softmax_cross_entropy_with_integer_labels(logits[:, task], y[:, t]).mean()
                   for t, task in enumerate(tasks))

    @jax.jit
    def step(params, opt_state, x, y):
        grads = jax.grad(loss)(params, x, y)
        updates, opt_state = optimiser.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    batch_size = min(cfg.batch_size, len(x_train))
    for epoch_key in jax.random.split(key, cfg.epochs):
        order = np.asarray(jax.random.permutation(epoch_key, len(x_train)))
        for start in range(0, len(order) - batch_size + 1, batch_size):  # drop the ragged last batch
            batch = order[start : start + batch_size]
            params, opt_state = step(params, opt_state, x_train[batch], y_train[batch])
    logits = x_test @ np.asarray(params[0]) + np.asarray(params[1])         # (n_test, sum of n_classes)
    return [float(np.mean(logits[:, task].argmax(axis=1) == y_test[:, t])) for t, task in enumerate(tasks)]


def probe(model: UPGen, vq, images, labels, cfg: ProbeConfig, *, layer=None, key):
    """Images uint8 (n, S, S, 3), labels int32 (n, tasks) -> {feature source: accuracy per task}."""
    depth = model.cfg.depth
    if layer is not None and not -depth <= layer < depth:
        raise ValueError(f"--layer {layer} does not exist: the model has layers 0..{depth - 1} (or -1 for the last)")
    init_key, split_key, probe_key = jax.random.split(key, 3)
    order = np.asarray(jax.random.permutation(split_key, len(images)))
    n_test = max(1, round(cfg.test_fraction * len(images)))
    test, train = order[:n_test], order[n_test:]
    if len(train) == 0:
        raise ValueError(f"{len(images)} images are too few to train on some and hold out the rest")
    image_ids = encode_images(vq, images)  # (n, Ni)
    sources = {
        "upgen": model_features(model, image_ids, layer, cfg.batch_size),
        "random init": model_features(UPGen(model.cfg, key=init_key), image_ids, layer, cfg.batch_size),
        "pixels": pixel_features(images),
    }
    n_classes = [int(y.max()) + 1 for y in labels.T]
    return {name: linear_probe(x[train], labels[train], x[test], labels[test], n_classes, cfg, key=probe_key)
            for name, x in sources.items()}


def held_out_probe(model, tokenizer, folder, cfg: ProbeConfig, *, layer=None, key):
    """A run's own pairs, in its token shards folder, their captions the classes: the probe trained on the training
    pairs and scored on the held-out pairs, beside zero-shot classification of the same pictures by the model's
    likelihood of each caption (evaluate.zero_shot) -> {"linear probe": share right, **zero-shot figures}."""
    rows = shards.held_out_rows(folder, evaluate.EVAL_PAIRS)
    references = shards.held_out_rows(folder, evaluate.READER_PICTURES, training=True)
    if not len(rows):
        raise ValueError(f"no held-out pairs in {folder}: give --ckpt a run of train.py --images")
    figures = evaluate.zero_shot(model, tokenizer, rows, references)
    if not figures:
        raise ValueError(f"the captions in {folder} take more than {evaluate.ZERO_SHOT_CAPTIONS} forms: no classes")
    Ni, n = model.cfg.image_tokens, len(rows)
    candidates, classes = evaluate.caption_classes(rows, references, Ni)
    x = model_features(model, np.concatenate([rows, references])[:, :Ni].astype(np.int32), layer, cfg.batch_size)
    accuracy = linear_probe(x[n:], classes[n:, None], x[:n], classes[:n, None], [len(candidates)], cfg, key=key)
    return {"pairs": n, "linear probe": accuracy[0], **figures}


# ----------------------------------------------------------------------------------------------
# Labelled data and checkpoints


def class_folder(path, image_size):
    """ImageNet's layout, one subfolder of images per class -> (images, labels (n, 1), classes, skipped)."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"no folder at {root}: give a folder with one subfolder of images per class")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise ValueError(f"{root} has {len(classes)} class subfolder(s) {classes}; a probe needs two or more")
    images, labels, skipped = [], [], []
    for label, name in enumerate(classes):
        files = sorted(f for f in (root / name).rglob("*") if f.is_file() and not f.name.startswith("."))
        if not files:
            raise ValueError(f"class folder {root / name} is empty: put its images in it or remove it")
        readable = len(images)
        for file in files:
            try:
                images.append(data.load_image(file, image_size))
                labels.append(label)
            except ValueError as e:  # an unreadable file is skipped and counted, not fatal
                skipped.append(str(e))
        if len(images) == readable:
            raise ValueError(f"class folder {root / name} has no readable image ({len(files)} files; {skipped[-1]})")
    return np.stack(images), np.array(labels, np.int32)[:, None], classes, skipped


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", default="checkpoints/shapes", help="folder with upgen.eqx and vqgan.eqx")
    parser.add_argument("--folder", help="probe on this folder of images, one subfolder per class, "
                        "instead of the shapes world")
    parser.add_argument("--shapes", type=int, default=3000,
                        help="shapes-world pictures to probe on, train and held out")
    parser.add_argument("--layer", type=int,
                        help="probe this one layer (0 = first, -1 = last); default all, concatenated")
    config.flag(parser, ProbeConfig(), "epochs", "passes of the classifier over the training split")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the shapes pictures, the split, random init and the probe")
    parser.add_argument("--held-out", action="store_true", help="the classes are the captions of the run in "
                        "--ckpt (at most 100 forms): train on its training pairs, score on its held-out pairs, "
                        "beside zero-shot")
    args = parser.parse_args(argv)
    try:
        model, tokenizer, vq = load_run(args.ckpt)
        if args.held_out:
            f = held_out_probe(model, tokenizer, Path(args.ckpt) / "shards", ProbeConfig(epochs=args.epochs),
                               layer=args.layer, key=jax.random.key(args.seed))
            print(f"{f['pairs']} held-out pictures of {args.ckpt}, {f['candidates']} captions to choose from: "
                  f"zero-shot by caption likelihood {f['zero-shot']:.1%}, linear probe {f['linear probe']:.1%}, the "
                  f"commonest caption for all {f['zero-shot chance']:.1%}")
            return f
        if args.folder:
            images, labels, classes, skipped = class_folder(args.folder, vq.cfg.image_size)
            tasks = [f"{len(classes)} classes"]
            if skipped:
                print(f"skipped {len(skipped)} unreadable file(s), e.g. {skipped[0]}")
        else:
            if vq.cfg.image_size != shapes.ShapesConfig().image_size:
                raise ValueError(f"{args.ckpt} takes {vq.cfg.image_size}px images, not shapes pictures: "
                                 "use --folder")
            images, _, labels = shapes.examples(args.shapes, args.seed)
            tasks = list(shapes.LABELS)
        cfg = ProbeConfig(**config.fields_of(ProbeConfig, args))
        scores = probe(model, vq, images, labels, cfg, layer=args.layer, key=jax.random.key(args.seed))
    except (ValueError, OSError) as e:
        sys.exit(f"error: {e}")
    layers = f"layer {args.layer}" if args.layer is not None else f"all {model.cfg.depth} layers"
    print(f"linear probe on {layers}: held-out accuracy ({cfg.test_fraction:.0%} of {len(images)} images)")
    print(f"{'task':<12}" + "".join(f"{name:>13}" for name in scores))
    for i, task in enumerate(tasks):
        print(f"{task:<12}" + "".join(f"{accuracies[i]:>13.1%}" for accuracies in scores.values()))
    return scores


if __name__ == "__main__":
    main()
