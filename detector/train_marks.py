"""Fit the signature-likeness model (detector/marks_model.json) on synthetic data only.

    .venv/bin/python -m detector.train_marks

Pictures are the generator's procedural icons (hands never used by the
benchmarks), signed with other hands' scribbles and with oblique DejaVu text;
candidates are labelled by overlap with the pasted box. The evaluation fonts
(Dancing Script, DKG Handwriting) and the emoji sets are never seen here, so the
benchmark measures generalisation. Deterministic for a seed.
"""

from __future__ import annotations

import argparse
import json
import random
import string
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.utils.class_weight import compute_sample_weight

from detector import augment, signatures
from detector.evaluate import iou

TRAIN_FONTS = ("/usr/share/fonts/truetype/dejavu/DejaVuSans-Oblique.ttf",
               "/usr/share/fonts/truetype/dejavu/DejaVuSerif-Italic.ttf")


def training_icons(rng: random.Random, n: int) -> list[Image.Image]:
    """`n` procedural icons in hands no benchmark uses (seeds from 50,000), four a hand, 64-128 px."""
    from generator.hands import VARIANTS, Hand
    from generator.parts import LAYERS, composite, render_part
    out = []
    for i in range(n):
        hand = Hand.from_seed(50_000 + i // 4)
        size = rng.choice([64, 64, 96, 128])
        out.append(composite([render_part(hand, layer, rng.randrange(VARIANTS[layer]), size) for layer in LAYERS]))
    return out


def _signature(rng: random.Random) -> Image.Image:
    from generator.hands import Hand
    from generator.parts import render_signature
    fonts = [f for f in TRAIN_FONTS if Path(f).exists()]
    if fonts and rng.random() < 0.5:
        name = "".join(rng.choice(string.ascii_letters) for _ in range(rng.randint(3, 8))).capitalize()
        return augment.handwriting_signature(name, rng.choice(fonts), rng)
    return render_signature(Hand.from_seed(90_000 + rng.randrange(10_000)), 160, jitter_seed=rng.randrange(1 << 30))


def dataset(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Candidate features and labels from n pictures, half of them signed."""
    rng = random.Random(seed)
    xs, ys = [], []
    for i, icon in enumerate(training_icons(rng, n)):
        box = None
        if i % 2 == 0:
            corner = rng.choice(["br", "br", "bl", "tr", "tl"])
            icon, box = augment.paste_signature(icon, _signature(rng), rng, corner=corner)
        for c in signatures.candidates(np.asarray(icon)):
            xs.append(c.features)
            ys.append(box is not None and iou(c.box, box) >= 0.3)
    return np.array(xs), np.array(ys)


def fit(x: np.ndarray, y: np.ndarray, seed: int = 0) -> GradientBoostingClassifier:
    """Shallow trees, few of them (the best of depths 2-4 x 100 or 300 trees by 5-fold log loss on
    this data), the classes weighted equally."""
    model = GradientBoostingClassifier(n_estimators=100, max_depth=2, learning_rate=0.1, random_state=seed)
    return model.fit(x, y, sample_weight=compute_sample_weight("balanced", y))


def export(model: GradientBoostingClassifier, x: np.ndarray) -> dict:
    """The fitted trees as plain JSON for `signatures.trees`, so scoring needs no scikit-learn.
    The prior's log-odds is recovered from the decision function at one point `x[:1]`, by public API."""
    estimators = [e[0] for e in model.estimators_]
    bias = float(model.decision_function(x[:1])[0]) - model.learning_rate * sum(
        float(e.predict(x[:1])[0]) for e in estimators)
    return {"kind": "gradient-boosted trees (scikit-learn)", "bias": bias, "learning_rate": model.learning_rate,
            "depth": max(e.tree_.max_depth for e in estimators),
            "trees": [{"feature": [max(int(f), 0) for f in e.tree_.feature], "threshold": e.tree_.threshold.tolist(),
                       "left": e.tree_.children_left.tolist(), "right": e.tree_.children_right.tolist(),
                       "value": e.tree_.value[:, 0, 0].tolist()} for e in estimators]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pictures", type=int, default=1600)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=signatures.MODEL_PATH)
    args = p.parse_args()
    x, y = dataset(args.pictures, args.seed)
    model = fit(x, y, args.seed)
    args.out.write_text(json.dumps(export(model, x[:1]) | {
        "features": list(signatures.FEATURES),
        "fitted_on": f"{args.pictures} synthetic pictures, seed {args.seed}, {int(y.sum())} positive candidates "
                     f"of {len(y)}"}) + "\n")
    print(f"wrote {args.out}: {int(y.sum())} positives / {len(y)} candidates")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
