"""Tokenise once: image-caption pairs (and unpaired text) -> token shards on disk that train.py memory-maps.

    python shards.py --images DIR --vqgan V --out DIR2              # a folder of a.jpg + a.txt (img2dataset's files)
    python shards.py --images 'dump/{00000..00099}.tar' --vqgan V --out DIR2 --text corpus.txt   # WebDataset shards

Input file i (a .tar, or a group of shard_size pictures of a folder) becomes images-<i>.npy, written by
process i mod P, which opens no other process's pictures; lines of --text go shard_size at a time into
text-<i>.npy. Pictures stream through the frozen VQGAN in fixed-size chunks, decoded by a thread pool while
the previous chunk encodes, so memory is bounded by a chunk and a shard, never the dataset. A shard is
written under a temporary name, renamed when complete and then listed in the process's manifest (JSON:
source, the VQGAN file's sha256, the vocabulary, each shard's examples, caption lengths and skipped files):
a killed run restarts at the first shard not listed and writes the same bytes.

train.py calls the last part of this file: the run's data (DataConfig, prepare: its image tokenizer, then its
shards) and each step's batch drawn from them (local_batch).
Read next: cluster.py.
"""
import argparse
import hashlib
import io
import itertools
import json
import signal
import sys
import tarfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

import checkpoint
import cluster
import config
import data
import shapes
import upgen
import vocab
import vqgan
import vqgan_train


@dataclass(frozen=True)
class ShardsConfig:
    shard_size: int = 1000  # pictures per shard of a folder (a .tar keeps its own) and per shapes .tar; text lines
    chunk: int = 256  # pictures per VQGAN call: memory is bounded by this and a shard, never the dataset
    workers: int = 4  # picture-decoding threads (pillow releases the GIL while it decodes)
    vocab_lines: int = 100_000  # captions, then as many text lines, counted for the word vocabulary
    max_words: int = 8192  # words in the vocabulary (others are spelled in bytes)
    text_tokens: int = 16  # text ids per example
    held_out: float = data.HELD_OUT  # share of pairs kept out of all training, for held-out figures

    def __post_init__(self):
        config.check(self, [(name, getattr(self, name) >= 1, "must be at least 1") for name in
                          ("shard_size", "chunk", "workers", "vocab_lines", "max_words", "text_tokens")]
                   + [("held_out", 0 <= self.held_out < 1, "must be in [0, 1)")])


# ----------------------------------------------------------------------------------------------
# Input files


def vocabulary(files, text, cfg: ShardsConfig):
    """The word vocabulary of the first vocab_lines captions and text lines, read in input order (captions only, no
    pictures): every process counts the same words, so all agree without talking."""
    captions = (caption for f in files for _, _, caption, why in data.pairs(f, pictures=False) if not why)
    lines = data.text_lines(text) if text else ()
    texts = itertools.chain(itertools.islice(captions, cfg.vocab_lines), itertools.islice(lines, cfg.vocab_lines))
    return vocab.build_tokenizer(texts, cfg.text_tokens, cfg.max_words)


def write_tar(file, images, captions, first):
    """Pictures (n, S, S, 3) and their captions into an open file as a WebDataset .tar: <first + j>.png + .txt."""
    with tarfile.open(fileobj=file, mode="w") as tar:
        for j, (image, caption) in enumerate(zip(images, captions)):
            png = io.BytesIO()
            Image.fromarray(image).save(png, format="PNG", compress_level=1)  # 64x64: 4x faster than level 6
            for suffix, payload in ((".png", png.getvalue()), (".txt", caption.encode())):
                info = tarfile.TarInfo(f"{first + j:09d}{suffix}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))


def render_shapes(folder, n, seed, cfg: ShardsConfig, *, process=0, processes=1):
    """The shapes world's n examples as .tar shards of shard_size (PNG + caption per example) in folder -> their
    paths. Shard i follows from (seed, i) alone; a process writes the missing ones it tokenises, and those whose
    captions the vocabulary counts."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"shapes-{i:05d}.tar" for i in range(-(-n // cfg.shard_size))]
    for i, path in enumerate(paths):
        if path.exists() or (i % processes != process and i * cfg.shard_size >= cfg.vocab_lines):
            continue
        images, captions, _ = shapes.examples(min(cfg.shard_size, n - i * cfg.shard_size), seed=[seed, i])
        checkpoint.write_atomically(path, lambda f: write_tar(f, images, captions, first=i * cfg.shard_size))
    return paths


# ----------------------------------------------------------------------------------------------
# Tokenising


def file_hash(path):
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def decoded_chunks(pairs, size, chunk, pool):
    """Lists of chunk decoded pairs; the next chunk decodes in the pool's threads while the caller encodes this one."""
    def submit():  # reads the chunk's bytes here, decodes them in the pool
        return [(pair[0], pool.submit(data.decode_pair, *pair, size)) for pair in itertools.islice(pairs, chunk)]
    pending = submit()
    while pending:
        following = submit()
        yield [(name, *job.result()) for name, job in pending]
        pending = following


def encode_file(vq, tokenizer, file, cfg: ShardsConfig, pool, bar):
    """One input file -> (training rows uint16 (n, image_tokens + text_tokens): VQGAN codes, then caption ids;
    the held-out rows, the same; caption-length counts (length,) of 1..length tokens of the training rows; skipped
    "name: why" strings)."""
    rows, held, skipped = [], [], []
    for chunk in decoded_chunks(data.pairs(file), vq.cfg.image_size, cfg.chunk, pool):
        skipped += [why for _, _, _, why in chunk if why]
        good = [(name, picture, caption) for name, picture, caption, why in chunk if not why]
        if not good:
            continue
        pictures = np.stack([picture for _, picture, _ in good])  # (n, S, S, 3)
        padded = np.concatenate([pictures, np.repeat(pictures[-1:], cfg.chunk - len(good), 0)])  # one compile
        codes = vqgan.encode_images(vq, padded, batch=cfg.chunk)[:len(good)]  # (n, image_tokens)
        ids = np.stack([tokenizer.encode(caption) for _, _, caption in good])  # (n, text_tokens)
        chunk_rows = np.concatenate([codes, ids], axis=1).astype(np.uint16)
        out = np.array([data.is_held_out(name, cfg.held_out) for name, _, _ in good])
        rows.append(chunk_rows[~out])
        held.append(chunk_rows[out])
        bar.update(len(good))
    if not rows and not skipped:
        skipped.append(f"{data.describe(file)}: no image-caption pairs")
    empty = np.zeros((0, vq.cfg.tokens_per_side ** 2 + cfg.text_tokens), np.uint16)
    rows, held = (np.concatenate(x) if x else empty for x in (rows, held))
    lengths = np.bincount((rows[:, -cfg.text_tokens:] != vocab.PAD).sum(1), minlength=cfg.text_tokens + 1)[1:]
    return rows, held, lengths.tolist(), skipped


def written(folder: Path, name: str, array) -> dict:
    """Saves array as folder/name atomically -> its manifest entry: the file, its rows, size and sha256."""
    checkpoint.write_atomically(folder / name, lambda f: np.save(f, array))
    return {"file": name, "rows": len(array), "bytes": (folder / name).stat().st_size,
            "sha256": file_hash(folder / name)}


def damage(folder: Path, entry: dict, verify: bool) -> str:
    """Why the shard a manifest entry lists is not the one written ("" when it is): missing, another size, a header
    numpy cannot read, another row count, or (verify: every byte read) another sha256."""
    path = folder / entry["file"]
    if not path.is_file():
        return "missing"
    if path.stat().st_size != entry["bytes"]:
        return f"{path.stat().st_size} bytes, {entry['bytes']} written"
    try:
        rows = len(np.load(path, mmap_mode="r"))
    except (ValueError, OSError, EOFError) as e:
        return f"unreadable ({str(e)[:80]})"
    if rows != entry["rows"]:
        return f"{rows} rows, {entry['rows']} written"
    return "its sha256 differs" if verify and file_hash(path) != entry["sha256"] else ""


def damaged(folder: Path, manifest: dict, verify: bool) -> list:
    """The manifest's shards (images with their held-out rows, text) that damage finds wrong -> [(entry, why)]."""
    entries = [e for s in manifest["shards"] for e in (s, s["held_out_file"])] + manifest["text_shards"]
    return [(entry, why) for entry in entries if (why := damage(Path(folder), entry, verify))]


def manifest_path(folder, process, processes):
    return Path(folder) / f"manifest-{process}of{processes}.json"


def save_manifest(path, manifest):
    checkpoint.write_atomically(path, lambda f: f.write(json.dumps(manifest, indent=1).encode()))


def check_manifest(manifest, folder, source, text, vq_hash, vq_path, cfg: ShardsConfig):
    """A one-line error when the shards already in folder were made from other data or with other settings."""
    if (manifest["source"], manifest["text"]) != (source, text):
        raise ValueError(f"{folder} holds the shards of {manifest['source']!r} (text {manifest['text']!r}), not "
                         f"{source!r} (text {text!r}): give another folder or delete it")
    if manifest["vqgan_sha256"] != vq_hash:
        raise ValueError(f"{folder} was tokenised with another VQGAN than {vq_path}: give another folder or delete it")
    if manifest["text_tokens"] != cfg.text_tokens:
        raise ValueError(f"{folder} holds {manifest['text_tokens']} text tokens per example, not {cfg.text_tokens}")
    if manifest["held_out"] != cfg.held_out:
        raise ValueError(f"{folder} holds out another share of the pairs: give another folder or delete it")


def stop_at_boundary(path: Path, manifest: dict, received: list, log):
    """Saves the manifest with the shard just written; a SIGTERM or SIGINT received meanwhile stops here."""
    save_manifest(path, manifest)
    if received:
        done = len(manifest["shards"]) + len(manifest["text_shards"])
        log(f"tokenising stopped by {received[0]} at a shard boundary, {done} shard(s) written: the same command "
            "continues with the next one")
        sys.exit(128 + signal.Signals[received[0]])


def tokenise(source, vq_path, folder, cfg=ShardsConfig(), *, text="", process=0, processes=1, log=print,
             verify=False):
    """Writes this process's token shards of source (and text) into folder, keeping those a previous run of the same
    source and VQGAN finished and that read back as written (verify: every byte) -> the process's manifest."""
    folder, vq_hash = Path(folder), file_hash(vq_path)
    path = manifest_path(folder, process, processes)
    manifest = json.loads(path.read_text()) if path.exists() else None
    if manifest:
        check_manifest(manifest, folder, source, text, vq_hash, vq_path, cfg)
        bad = damaged(folder, manifest, verify)
        for entry, why in bad:
            log(f"token shard {folder / entry['file']} is damaged ({why}): tokenising its input file again")
        files = {entry["file"] for entry, _ in bad}
        manifest["shards"] = [s for s in manifest["shards"] if not {s["file"], s["held_out_file"]["file"]} & files]
        manifest["text_shards"] = [s for s in manifest["text_shards"] if s["file"] not in files]
        manifest["complete"] &= not bad
    if manifest and manifest["complete"]:
        log(f"token shards: {folder}, complete")
        return manifest
    files = data.input_files(source, cfg.shard_size)
    if len(files) < processes:
        raise ValueError(f"{len(files)} input file(s) for {processes} processes: each process needs one of its own; "
                         "split the data into more .tar shards (or pictures into more folders of shard_size)")
    vq = vqgan.load_vqgan(vq_path)
    if manifest is None:
        tokenizer = vocabulary(files, text, cfg)
        if max(vq.cfg.codebook_size, tokenizer.vocab_size) > 2 ** 16:
            raise ValueError("shards hold uint16 ids: the codebook and the text vocabulary must have at most 65536")
        manifest = {"source": source, "text": text, "process": process, "processes": processes,
                    "vqgan_sha256": vq_hash, "image_tokens": vq.cfg.tokens_per_side ** 2,
                    "text_tokens": cfg.text_tokens, "held_out": cfg.held_out, "words": list(tokenizer.words),
                    "shards": [], "text_shards": [], "complete": False}
    tokenizer = vocab.Tokenizer(tuple(manifest["words"]), cfg.text_tokens)
    folder.mkdir(parents=True, exist_ok=True)
    save_manifest(path, manifest)
    done = {s["file"] for s in manifest["shards"] + manifest["text_shards"]}
    mine = [i for i in range(process, len(files), processes) if f"images-{i:05d}.npy" not in done]
    log(f"tokenising {len(mine)} of {len(files)} input files into {folder} (process {process} of {processes})")
    lines = data.text_lines(text) if text else iter(())
    groups = iter(lambda: list(itertools.islice(lines, cfg.shard_size)), [])  # shard_size lines at a time
    mine_texts = ((i, g) for i, g in enumerate(groups) if i % processes == process and f"text-{i:05d}.npy" not in done)
    with ThreadPoolExecutor(cfg.workers) as pool, tqdm(unit=" pictures", desc="tokenise", disable=not mine) as bar, \
            cluster.caught_signals() as received:
        for i in mine:
            rows, held, lengths, skipped = encode_file(vq, tokenizer, files[i], cfg, pool, bar)
            held_out_file = written(folder, f"held-out-{i:05d}.npy", held)
            manifest["shards"].append({**written(folder, f"images-{i:05d}.npy", rows),
                                       "held_out_file": held_out_file, "input": data.describe(files[i]),
                                       "examples": len(rows), "held_out": len(held), "caption_lengths": lengths,
                                       "skipped": skipped})
            stop_at_boundary(path, manifest, received, log)
        for i, group in mine_texts:  # every process reads all the lines, and tokenises its own shard_size at a time
            ids = np.stack([tokenizer.encode(line) for line in group]).astype(np.uint16)  # (n, text_tokens)
            manifest["text_shards"].append({**written(folder, f"text-{i:05d}.npy", ids), "examples": len(ids)})
            stop_at_boundary(path, manifest, received, log)
    for listed in (manifest["shards"], manifest["text_shards"]):
        listed.sort(key=lambda shard: shard["file"])  # those tokenised again take their places back
    manifest["complete"] = True
    save_manifest(path, manifest)
    skipped = [s for shard in manifest["shards"] for s in shard["skipped"]]
    log(f"{sum(s['examples'] for s in manifest['shards'])} pictures in {len(manifest['shards'])} shard(s), "
        f"{sum(s['held_out'] for s in manifest['shards'])} held out; skipped {len(skipped)} (listed in "
        f"{path})" + "".join(f"; {s}" for s in skipped[:3]))
    return manifest


def open_shards(folder, vq_path, process=0, processes=1):
    """This process's finished shards, memory-mapped -> (the text tokenizer, with the caption-length counts of its
    shards; image shards uint16 (n_s, image_tokens + text_tokens); text shards uint16 (n_s, text_tokens), or the
    captions of the image shards when there is no text corpus)."""
    path = manifest_path(folder, process, processes)
    if not path.exists():
        raise FileNotFoundError(f"no {path}: tokenise first (python shards.py --out {folder} ...)")
    manifest = json.loads(path.read_text())
    if not manifest["complete"]:
        raise ValueError(f"the tokenisation into {folder} did not finish: run it again to continue")
    if manifest["vqgan_sha256"] != file_hash(vq_path):
        raise ValueError(f"{folder} was tokenised with another VQGAN than {vq_path} (sha256 differs): refusing to mix "
                         "their codes; tokenise again into another folder")
    bad = damaged(Path(folder), manifest, verify=False)
    if bad:
        entry, why = bad[0]
        raise ValueError(f"token shard {Path(folder) / entry['file']} is damaged ({why}): the command that tokenised "
                         f"{folder} (python train.py or python shards.py, the same flags) tokenises its input again")
    images = [np.load(Path(folder) / s["file"], mmap_mode="r") for s in manifest["shards"] if s["examples"]]
    if not images:
        raise data.no_pairs_error(manifest["source"], [why for s in manifest["shards"] for why in s["skipped"]])
    texts = [np.load(Path(folder) / s["file"], mmap_mode="r") for s in manifest["text_shards"]]
    if manifest["text"] and not texts:
        raise ValueError(f"process {process} has no lines of {manifest['text']}: give more text or fewer processes")
    texts = texts or [s[:, -manifest["text_tokens"]:] for s in images]  # no corpus: the captions are the text
    lengths = np.sum([s["caption_lengths"] for s in manifest["shards"]], axis=0).tolist()
    return vocab.Tokenizer(tuple(manifest["words"]), manifest["text_tokens"], tuple(lengths)), images, texts


def gather(arrays, rows):
    """Rows (k,) of some (memory-mapped) arrays, counted through them in order -> (k, ...)."""
    ends = np.cumsum([len(a) for a in arrays])
    which = np.searchsorted(ends, rows, side="right")
    out = np.empty((len(rows), *arrays[0].shape[1:]), arrays[0].dtype)
    for i in np.unique(which):  # reads only those rows' pages
        out[which == i] = arrays[i][rows[which == i] - ends[i] + len(arrays[i])]
    return out


def held_out_rows(folder, n, training=False):
    """Up to n held-out pairs (training=True: training pairs) of every process's finished shards in folder, spread
    over them, read through memory maps -> uint16 (k, Ni + Nt)."""
    prefix, count = ("images-", "examples") if training else ("held-out-", "held_out")
    manifests = [json.loads(path.read_text()) for path in sorted(Path(folder).glob("manifest-*.json"))]
    arrays = [np.load(Path(folder) / s["file"].replace("images-", prefix), mmap_mode="r") for manifest in manifests
              for s in manifest["shards"] if s[count]]
    if not arrays:
        return np.zeros((0, 0), np.uint16)
    total = sum(len(a) for a in arrays)
    return gather(arrays, np.unique(np.linspace(0, total - 1, min(n, total)).astype(int)))


# ----------------------------------------------------------------------------------------------
# The run's data: its shards, and each step's batch drawn from them

KINDS = (upgen.PAIRED, upgen.IMAGE_ONLY, upgen.TEXT_ONLY)


@dataclass(frozen=True)
class DataConfig:
    images: str = ""            # image-caption pairs: folder of a.jpg + a.txt, .tar(s), globs, brace patterns;
    #                             "" = the shapes world
    shapes: int = 5000          # shapes-world examples when there are no --images
    text: str = ""              # unpaired text: a .txt file or folder, one document per line
    mix: tuple = (1.0, 0.0, 0.0)  # batch shares of paired, image-only and text-only examples (the paper's
    #                             0.7 0.15 0.15 with a --text corpus; on shapes alone they cost steps)
    vqgan: str = ""             # image tokenizer (default: the shapes one, or one trained on your --images)
    vqgan_codes: int = 32       # codes of the image tokenizer trained on --images when no --vqgan is given
    vqgan_size: int = 32        # side in pixels of the pictures that tokenizer reads: 32 gives a 4x4 grid of tokens,
    #                             64 an 8x8 grid for pictures whose detail 32 pixels lose (a step costs ~2.3x)
    vqgan_pictures: int = 5000  # pictures of --images that tokenizer trains on, a tenth held out
    vqgan_steps: int = 5000     # steps of that tokenizer's training (~2 minutes on 2 cores at 32 pixels, ~4 at 64)
    shards: str = ""            # token shards, tokenised into first when missing ("" = OUT/shards)
    verify_shards: bool = False  # read every byte of the shards against the manifest's sha256 (sizes and headers
    #                             are always checked); a damaged shard is tokenised again

    def __post_init__(self):
        object.__setattr__(self, "mix", tuple(self.mix))  # argparse and JSON give a list
        config.check(self, [(name, getattr(self, name) >= 1, "must be at least 1") for name in
                            ("shapes", "vqgan_codes", "vqgan_pictures", "vqgan_steps")] + [
            ("vqgan_size", self.vqgan_size >= 8 and self.vqgan_size % 8 == 0, "must be a multiple of 8 pixels"),
            ("mix", len(self.mix) == 3 and min(self.mix) >= 0 and sum(self.mix) > 0, "must be 3 shares >= 0, not 0"),
            ("text", not self.text or self.mix[2] > 0, "needs a text-only share in --mix, e.g. --mix 0.7 0.15 0.15")])


def prepare(dcfg: DataConfig, out: Path, text_tokens: int, seed: int, log, *, process=0, processes=1):
    """A run's data -> (its frozen VQGAN, the shards' text tokenizer, this process's image shards, its text shards),
    memory-mapped: the image tokenizer vqgan_train.image_tokenizer chooses, then the shards in dcfg.shards, which
    each process tokenises first where they lack its own input files. The shapes world (no images) takes the same
    path as any dataset: dcfg.shapes examples rendered into out/shapes/ as .tar shards, then tokenised."""
    vq_cfg = vqgan.VQGANConfig(image_size=dcfg.vqgan_size, codebook_size=dcfg.vqgan_codes)
    vq_tcfg = vqgan_train.VQGANTrainConfig(steps=dcfg.vqgan_steps, train_pictures=dcfg.vqgan_pictures)
    vq, vq_path = vqgan_train.image_tokenizer(out, dcfg.vqgan, dcfg.images, vq_cfg, vq_tcfg, log)
    cfg, source, folder = ShardsConfig(text_tokens=text_tokens), dcfg.images, Path(dcfg.shards or out / "shards")
    if not source:
        tars = render_shapes(out / "shapes", dcfg.shapes, seed, cfg, process=process, processes=processes)
        source = f"{out / 'shapes'}/shapes-{{00000..{len(tars) - 1:05d}}}.tar"
    tokenise(source, vq_path, folder, cfg, text=dcfg.text, process=process, processes=processes, log=log,
             verify=dcfg.verify_shards)
    return (vq, *open_shards(folder, vq_path, process, processes))


def kind_counts(batch: int, mix) -> tuple:
    """Splits a batch into per-kind counts in the mix proportions; the rounding remainder goes to paired."""
    counts = [int(batch * m / sum(mix)) for m in mix]
    counts[0] += batch - sum(counts)
    return tuple(counts)


def draw(arrays, n, rng):
    """n rows drawn with replacement, uniformly over all rows of some (memory-mapped) arrays -> (n, ...)."""
    return gather(arrays, rng.integers(sum(len(a) for a in arrays), size=n))


def local_batch(corpus, step: int, counts, mcfg: upgen.UPGenConfig, *, seed: int, process: int = 0):
    """This host's rows of step's batch: tokens int32 (b, L), kinds int32 (b,).

    corpus = (image shards (n_s, image_tokens + text_tokens), text shards (n_s, text_tokens)), this host's own.
    A pure function of (seed, step, process), drawn with replacement: a resumed run sees exactly the batches it
    would have seen, and no host reads another's data."""
    image_shards, text_shards = corpus
    paired, image_only, text_only = counts
    rng = np.random.default_rng([seed, step, process])
    rows = draw(image_shards, paired + image_only, rng).astype(np.int32)  # (paired + image_only, Ni + Nt)
    codes, captions = rows[:, :mcfg.image_tokens], rows[:paired, mcfg.image_tokens:]
    tokens = np.concatenate([upgen.make_sequence(codes[:paired], captions, mcfg),
                             upgen.make_sequence(codes[paired:], None, mcfg),
                             upgen.make_sequence(None, draw(text_shards, text_only, rng).astype(np.int32), mcfg)])
    return tokens, np.repeat(np.array(KINDS, np.int32), counts)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", default="", help="a folder of a.jpg + a.txt, a .tar, or comma-separated .tar globs or "
                                                "brace patterns ('dump/{00000..00099}.tar')")
    p.add_argument("--text", default="", help="unpaired text: a .txt file or folder, one document per line")
    p.add_argument("--vqgan", default="checkpoints/shapes/vqgan.eqx", help="the frozen image tokenizer (.eqx)")
    p.add_argument("--out", default="", help="folder of the token shards and manifests (train.py --shards)")
    p.add_argument("--process", type=int, default=0, help="this process's index: it tokenises input files i with "
                                                          "i mod --processes == --process")
    p.add_argument("--processes", type=int, default=1, help="processes (hosts) that will train on the shards")
    for name, help in [("shard_size", "pictures per shard of a folder; text lines"),
                       ("chunk", "pictures per VQGAN call"), ("workers", "picture-decoding threads"),
                       ("vocab_lines", "captions (and text lines) counted for the word vocabulary"),
                       ("max_words", "words in the vocabulary"),
                       ("text_tokens", "text ids per example (train.py's too)"),
                       ("held_out", "share of pairs kept out of training, for held-out figures (train.py's: default)")]:
        config.flag(p, ShardsConfig(), name, help)
    args = p.parse_args(argv)
    try:
        if not args.images or not args.out:
            raise ValueError("give --images and --out")
        cfg = ShardsConfig(**config.fields_of(ShardsConfig, args))
        tokenise(args.images, args.vqgan, args.out, cfg, text=args.text, process=args.process,
                 processes=args.processes)
    except (ValueError, OSError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
