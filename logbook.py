"""A run's record in its folder: train.log, the lines it printed; metrics.jsonl, the figures of every log point;
curves.png, drawn anew from them with pillow at every point: the losses (training, and validation of image and
caption tokens) and the accuracies of masked tokens, against steps. A resumed run's points replace those it redoes.
Read next: evaluate.py.
"""
import json
import time
from pathlib import Path

from PIL import Image, ImageDraw
from tqdm import tqdm

PANELS = [("loss", ["loss", "val_image_loss", "val_text_loss"]), ("accuracy", ["image_acc", "text_acc"])]  # 0 to 1
COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44)]
W, H, MARGIN = 640, 240, 48  # one panel's pixels, and its left and bottom margin for the labels


def open_log(out: Path, process: int):
    """-> log(line): on process 0, prints the line after the seconds since now and appends it to out/train.log."""
    if process:
        return lambda line: None
    file, started = open(out / "train.log", "a"), time.perf_counter()

    def log(line):
        line = f"[{time.perf_counter() - started:5.0f} s] {line}"
        tqdm.write(line)
        print(line, file=file, flush=True)
    return log


def record(out: Path, step: int, figures: dict):
    """Appends {"step": step, **figures} to out/metrics.jsonl and redraws out/curves.png."""
    with open(out / "metrics.jsonl", "a") as f:
        print(json.dumps({"step": step, **{k: float(v) for k, v in figures.items()}}), file=f)
    draw(read(out / "metrics.jsonl"), out / "curves.png")


def read(path: Path) -> list[dict]:
    """The points of metrics.jsonl in step order; a step logged again (after a resume) keeps its last figures."""
    points = {}
    for line in Path(path).read_text().splitlines():
        point = json.loads(line)
        points = {s: p for s, p in points.items() if s < point["step"]}  # a resumed run redoes what follows
        points[point["step"]] = point
    return list(points.values())


def draw(points: list[dict], path: Path):
    """One panel per PANELS entry, stacked: each series a polyline, its name in its colour, axes labelled."""
    image = Image.new("RGB", (W, H * len(PANELS)), "white")
    pen = ImageDraw.Draw(image)
    steps = [p["step"] for p in points]
    x0, x1 = min(steps), max(max(steps), min(steps) + 1)
    for i, (title, names) in enumerate(PANELS):
        top, series = i * H, [(n, [(p["step"], p[n]) for p in points if n in p]) for n in names]
        values = [v for _, s in series for _, v in s] or [0.0]
        y0, y1 = (0.0, 1.0) if title == "accuracy" else (min(values), max(max(values), min(values) + 1e-6))
        px = lambda s: MARGIN + (s - x0) / (x1 - x0) * (W - MARGIN - 10)  # noqa: E731
        py = lambda v: top + 20 + (y1 - v) / (y1 - y0) * (H - MARGIN - 20)  # noqa: E731
        pen.rectangle([MARGIN, top + 20, W - 10, top + H - MARGIN], outline="grey")
        pen.text((4, top + 20), f"{y1:.3g}", fill="black")
        pen.text((4, top + H - MARGIN - 10), f"{y0:.3g}", fill="black")
        pen.text((MARGIN, top + H - MARGIN + 4), f"step {x0}", fill="black")
        pen.text((W - 90, top + H - MARGIN + 4), f"step {x1}", fill="black")
        pen.text((MARGIN, top + 4), title, fill="black")
        for j, (name, line) in enumerate(series):
            if len(line) > 1:
                pen.line([(px(s), py(v)) for s, v in line], fill=COLOURS[j], width=2)
            elif line:
                pen.ellipse([px(line[0][0]) - 2, py(line[0][1]) - 2, px(line[0][0]) + 2, py(line[0][1]) + 2],
                            fill=COLOURS[j])
            pen.text((MARGIN + 80 + 130 * j, top + 4), name, fill=COLOURS[j])
    image.save(path)
