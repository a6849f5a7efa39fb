"""logbook.py: every log point lands in metrics.jsonl and redraws curves.png; a resumed run's points replace the
ones it redoes."""
import numpy as np
from PIL import Image

import logbook


def test_every_log_point_redraws_the_curves_and_a_redone_step_replaces_its_point(tmp_path):
    figures = lambda loss: {"loss": loss, "val_image_loss": loss + 1, "val_text_loss": loss / 2,  # noqa: E731
                            "image_acc": 1 / loss, "text_acc": 0.5, "grad_norm": 1.0}
    logbook.record(tmp_path, 50, figures(6.0))
    logbook.record(tmp_path, 100, figures(5.0))
    first = (tmp_path / "curves.png").read_bytes()
    logbook.record(tmp_path, 150, figures(4.0))
    assert (tmp_path / "curves.png").read_bytes() != first
    picture = np.asarray(Image.open(tmp_path / "curves.png").convert("RGB"))
    assert picture.shape[0] == logbook.H * len(logbook.PANELS) and (picture != 255).any()
    logbook.record(tmp_path, 100, figures(4.5))  # a run resumed from step 50 logs step 100 again
    assert [(p["step"], p["loss"]) for p in logbook.read(tmp_path / "metrics.jsonl")] == [(50, 6.0), (100, 4.5)]
