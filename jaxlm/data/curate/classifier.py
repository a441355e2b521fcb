"""A fastText quality classifier (DCLM / FineWeb-Edu style): trained on positive and negative documents,
scoring P(high quality) per document.

fastText rather than a linear probe on jaxlm features: it needs no model and no accelerator, scores
several MB/s per core in its own C++ (so the stage keeps up with the model-free ones), and is what DCLM
and FineWeb-Edu's annotation pipelines deploy. The wheel is `fasttext-community` (the `curate` extra,
maintained, numpy 2 and Python 3.11+ wheels): the original `fasttext` package has no wheels and its
0.9.x predict breaks on numpy 2, and `fasttext-numpy2-wheel` 0.9.2 failed here with "Encountered NaN"
and gave different models for the same data and seed within one process; fasttext-community's are
byte-identical.

Files: MODEL.bin (fastText's own format) and MODEL.bin.json beside it (labels, the options it was trained
with, held-out accuracy, and the .bin's size and hash). `load` checks the magic number, the sidecar and
the labels before fastText reads the file, so a wrong file is a one-line error, not a crash.
Training is deterministic: one thread, a fixed seed, examples in file order.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import tempfile
from pathlib import Path

from jaxlm.data.curate.config import require
from jaxlm.errors import JaxlmError
from jaxlm.outputs import output_path, write_file

LABELS = ("__label__hq", "__label__lq")  # high quality (positive), low quality (negative)
_MAGIC = (793712314).to_bytes(4, "little")  # fastText's FASTTEXT_FILEFORMAT_MAGIC_INT32
FORMAT = "jaxlm-fasttext-quality/1"


@dataclasses.dataclass(frozen=True)
class TrainOptions:
    epoch: int = 10
    lr: float = 0.5
    dim: int = 32
    word_ngrams: int = 2
    minn: int = 2  # character n-grams of words (spelling and OCR noise are in the characters)
    maxn: int = 4
    bucket: int = 1 << 16  # hashed n-gram rows: the .bin is about (words + bucket) x dim x 4 bytes
    seed: int = 0
    held_out: float = 0.1  # share of each class kept aside to report accuracy
    balance: bool = True  # repeat the smaller class's training examples up to the larger's count (DCLM trains balanced)


def one_line(text: str) -> str:
    """fastText reads one example per line."""
    return " ".join(text.split())


def train(positives: list[str], negatives: list[str], out: str | Path, opts: TrainOptions = TrainOptions()) -> dict:
    """Fit on the documents, write out (.bin) + out.json atomically; returns the sidecar's contents."""
    fasttext = require("fasttext", "train-classifier")
    if not positives or not negatives:
        raise JaxlmError(f"train-classifier needs positive and negative documents, got {len(positives)} positive and "
                         f"{len(negatives)} negative; check --positive / --negative")
    rng = random.Random(opts.seed)
    per_class, held = [], []
    for label, docs in zip(LABELS, (positives, negatives)):
        docs = [d for d in (one_line(x) for x in docs) if d]
        order = list(range(len(docs)))
        rng.shuffle(order)
        cut = int(len(docs) * opts.held_out)
        held += [(label, docs[i]) for i in order[:cut]]
        per_class.append([f"{label} {docs[i]}" for i in order[cut:]])
    if opts.balance:
        most = max(len(c) for c in per_class)
        per_class = [(c * (most // len(c) + 1))[:most] if c else c for c in per_class]
    examples = [x for c in per_class for x in c]
    rng.shuffle(examples)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "train.txt"
        data.write_text("\n".join(examples) + "\n", encoding="utf-8")
        model = fasttext.train_supervised(str(data), epoch=opts.epoch, lr=opts.lr, dim=opts.dim,
                                          wordNgrams=opts.word_ngrams, minn=opts.minn, maxn=opts.maxn,
                                          bucket=opts.bucket, seed=opts.seed, thread=1, verbose=0, loss="softmax")
        with output_path(out, overwrite=True, folder=False) as tmp_bin:
            model.save_model(str(tmp_bin))
    right = {label: [(score_texts(model, [t])[0] >= 0.5) == (label == LABELS[0]) for lab, t in held if lab == label]
             for label in LABELS}
    accuracy = sum(sum(v) for v in right.values()) / len(held) if held else None
    per_label = {label: (sum(v) / len(v) if v else None) for label, v in right.items()}
    blob = Path(out).read_bytes()
    meta = {"format": FORMAT, "labels": list(LABELS), "options": dataclasses.asdict(opts),
            "examples": {"positive": len(positives), "negative": len(negatives)}, "held_out_accuracy": accuracy,
            "held_out_accuracy_per_label": per_label,
            "held_out_examples": len(held), "bin_bytes": len(blob), "bin_sha256": hashlib.sha256(blob).hexdigest()}
    write_file(sidecar(out), json.dumps(meta, indent=2) + "\n")
    return meta


def sidecar(path: str | Path) -> Path:
    return Path(f"{path}.json")


def load(path: str | Path):
    """The fastText model at `path`, after checking it is one written by `train` (one-line JaxlmError if not)."""
    fasttext = require("fasttext", "data.curate.classifier")
    path = Path(path)
    fix = "give a .bin written by `jaxlm data train-classifier` (with its .json beside it)"
    if not path.is_file():
        raise JaxlmError(f"classifier {path} does not exist; {fix}")
    with open(path, "rb") as fh:
        if fh.read(4) != _MAGIC:
            raise JaxlmError(f"classifier {path} is not a fastText model file; {fix}")
    try:
        meta = json.loads(sidecar(path).read_text())
    except (OSError, json.JSONDecodeError):
        raise JaxlmError(f"classifier {path} has no readable {sidecar(path).name} beside it; {fix}") from None
    if meta.get("format") != FORMAT or meta.get("bin_bytes") != path.stat().st_size:
        raise JaxlmError(f"classifier {path} does not match its {sidecar(path).name} (another model's sidecar, or a "
                         f"changed file); {fix}")
    model = fasttext.load_model(str(path))
    if sorted(model.get_labels()) != sorted(LABELS):
        raise JaxlmError(f"classifier {path} has labels {model.get_labels()}, not {list(LABELS)}; {fix}")
    return model


def score_texts(model, texts: list[str]) -> list[float]:
    """P(high quality) per text (fastText's softmax over the two labels)."""
    lines = [one_line(t) for t in texts]
    labels, probs = model.predict([x or "." for x in lines], k=2)
    return [float(p[list(lab).index(LABELS[0])]) if x and LABELS[0] in lab else 0.0
            for x, lab, p in zip(lines, labels, probs)]


def file_hash(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
