"""`jaxlm data curate`: planted near-duplicates found at the documented threshold (precision and recall
>= 0.95) and the same for 1, 2 and 4 processes; planted eval overlaps found and a clean control left
alone; classifier and perplexity scores the same for any worker count and after a resume; thresholds
changed without rescoring; curated shards read back as a data source; bad input = one line, exit 2."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from jaxlm.assets import resolve_path
from jaxlm.config import from_dict
from jaxlm.data.config import DataConfig
from jaxlm.errors import JaxlmError

pytest.importorskip("rensa")
fasttext = pytest.importorskip("fasttext")

from jaxlm.data.curate import classifier, minhash, ngrams  # noqa: E402
from jaxlm.data.curate.run import curate  # noqa: E402

THRESHOLD = 0.8  # the documented default (data.curate.near_dedup.threshold)
BOILERPLATE = ("This text is provided by the digital library for free. Please read the terms of use before "
               "copying it. All rights reserved by the contributors listed below.")


def _paragraphs() -> list[str]:
    paras = []
    for f in sorted(resolve_path("bundled:corpus/train").glob("*.txt")):
        paras += [p.strip() for p in f.read_text().split("\n\n") if len(p.split()) >= 12]
    return paras


def _jaccard(a: str, b: str, n: int = 5) -> float:
    """The true Jaccard similarity of word 5-gram sets (an implementation independent of ngrams.py)."""
    def grams(t):
        w = ngrams.words(t)
        return {tuple(w[i:i + n]) for i in range(len(w) - n + 1)}
    ga, gb = grams(a), grams(b)
    return len(ga & gb) / len(ga | gb)


def _edit(text: str, rng: random.Random, share: float) -> str:
    words = text.split()
    for i in rng.sample(range(len(words)), max(1, int(len(words) * share))):
        words[i] = rng.choice(["thee", "thou", "lord", "sweet", "night", "gentle"])
    return " ".join(words)


def planted_corpus(seed: int = 0, bases: int = 60):
    """Base documents of 12 paragraphs (from different places of the plays), each with 0-3 planted near-copies
    (word edits, shuffled paragraphs, added boilerplate) and 0-1 far copies (heavy edits). Returns
    (documents, cluster of each document, true Jaccard of each planted pair)."""
    rng = random.Random(seed)
    paras = _paragraphs()
    rng.shuffle(paras)
    docs, cluster, near, far = [], [], [], []
    for b in range(bases):
        base_paras = paras[b * 12:(b + 1) * 12]
        base = "\n\n".join(base_paras)
        docs.append(base)
        cluster.append(b)
        for kind in rng.sample(["edit", "shuffle", "boilerplate"], rng.randint(0, 3)):
            if kind == "edit":
                copy = _edit(base, rng, 0.01)
            elif kind == "shuffle":
                shuffled = list(base_paras)  # two paragraphs trade places
                i, j = rng.sample(range(len(shuffled)), 2)
                shuffled[i], shuffled[j] = shuffled[j], shuffled[i]
                copy = "\n\n".join(shuffled)
            else:
                copy = BOILERPLATE + "\n\n" + base
            docs.append(copy)
            cluster.append(b)
            near.append((kind, _jaccard(base, copy)))
        if rng.random() < 0.5:  # a far copy: its own cluster
            copy = _edit(base, rng, 0.12)
            docs.append(copy)
            cluster.append(bases + b)
            far.append(_jaccard(base, copy))
    order = list(range(len(docs)))
    rng.shuffle(order)
    return [docs[i] for i in order], [cluster[i] for i in order], near, far


def pair_scores(pred_rep: np.ndarray, truth: list[int]) -> tuple[float, float]:
    """Precision and recall of the same-cluster pairs."""
    pred = {(i, j) for i in range(len(truth)) for j in range(i) if pred_rep[i] == pred_rep[j]}
    true = {(i, j) for i in range(len(truth)) for j in range(i) if truth[i] == truth[j]}
    tp = len(pred & true)
    return tp / max(len(pred), 1), tp / max(len(true), 1)


def test_near_dedup_precision_recall_at_the_documented_threshold():
    docs, truth, near, far = planted_corpus()
    assert min(j for _, j in near) >= 0.85 and max(far) <= 0.6, (near, far)  # the planted similarities
    sig = minhash.document_signatures(docs, 5, "word", 128, seed=1)
    rep = minhash.clusters(sig, np.ones(len(docs), bool), THRESHOLD)
    precision, recall = pair_scores(rep, truth)
    assert precision >= 0.95 and recall >= 0.95, (precision, recall)
    assert all(rep[i] <= i for i in range(len(docs)))  # a cluster is represented by its first document


def _write_jsonl(folder: Path, docs: list[str], files: int) -> None:
    folder.mkdir(parents=True)
    for k in range(files):
        with open(folder / f"part{k}.jsonl", "w") as f:
            for i in range(k, len(docs), files):
                f.write(json.dumps({"id": f"d{i}", "text": docs[i]}) + "\n")


def _data(sources: list[dict], **curate_cfg) -> DataConfig:
    return from_dict(DataConfig, {"sources": sources, "curate": curate_cfg})


def _attrs(out: Path):
    import pyarrow.parquet as pq

    t = pq.read_table(out / "attributes.parquet").to_pydict()
    nan_free = lambda v: None if isinstance(v, float) and v != v else v  # noqa: E731  (NaN != NaN)
    rows = zip(*[[nan_free(v) for v in t[c]] for c in sorted(t) if c != "id"])
    return {k: v for k, v in sorted(zip(t["id"], rows))}


def _tok():
    from jaxlm.tokenizer import load_tokenizer

    return load_tokenizer("bundled:tokenizer")


def test_near_dedup_same_for_1_2_4_processes(tmp_path):
    docs, truth, _, _ = planted_corpus(seed=1, bases=30)
    _write_jsonl(tmp_path / "corpus", docs, files=3)  # 4 processes: byte ranges; 2: whole files
    data = _data([{"path": str(tmp_path / "corpus"), "name": "web"}], near_dedup={"enabled": True},
                 count_tokens=False)
    results = {}
    for n in (1, 2, 4):
        out = tmp_path / f"out{n}"
        for p in reversed(range(n)):  # process 0 last: it selects once every part exists
            curate(data, _tok(), out, process_index=p, process_count=n, log=lambda *_: None)
        results[n] = _attrs(out)
    assert results[1] == results[2] == results[4]
    kept = [k for k, v in results[1].items() if v[_attr_names(tmp_path / "out1").index("dropped_by")] == ""]
    assert len(kept) == len(set(truth))  # one document per planted cluster
    curated = [json.loads(line) for f in sorted((tmp_path / "out4" / "curated" / "web").glob("*.jsonl"))
               for line in f.read_text().splitlines()]
    assert len(curated) == len(kept)


def _attr_names(out: Path) -> list[str]:
    import pyarrow.parquet as pq

    return sorted(c for c in pq.read_schema(out / "attributes.parquet").names if c != "id")  # as _attrs orders them


def test_decontamination_finds_every_planted_overlap_and_nothing_in_a_clean_control():
    from jaxlm.data.curate import decontam

    index = decontam.build_index(decontam.task_items(("bundled:eval",)) + [
        ("validation:held_out", f.read_text()) for f in sorted(resolve_path("bundled:corpus/valid").glob("*.txt"))],
        13, 8)
    rng = random.Random(0)
    clean = _paragraphs()[:400]
    cloze_file = resolve_path("bundled:eval/shakespeare_cloze.jsonl")
    cloze = [json.loads(x)["context"] for x in cloze_file.read_text().splitlines()]
    valid_words = resolve_path("bundled:corpus/valid/comedy_of_errors.txt").read_text().split()
    planted = []
    for i in range(40):
        if i % 2:
            needle = rng.choice([c for c in cloze if len(c.split()) >= 8])
        else:
            start = rng.randrange(len(valid_words) - 20)
            needle = " ".join(valid_words[start:start + 13])
        host = clean[i].split()
        cut = rng.randrange(len(host))
        text = " ".join(host[:cut]) + " " + needle.upper() + ", " + " ".join(host[cut:])  # case, punctuation differ
        planted.append((text, needle))
    for text, needle in planted:
        hits, spans = index.matches(text)
        assert hits > 0, needle
        assert any(ngrams.words(needle) == ngrams.words(text[a:b]) or
                   " ".join(ngrams.words(needle)) in " ".join(ngrams.words(text[a:b])) for a, b, _ in spans)
    assert all(index.matches(t)[0] == 0 for t in clean)


@pytest.fixture(scope="module")
def quality_model(tmp_path_factory):
    """The bundled example: clean plays (positive) against OCR'd and Folio-spelling text (negative)."""
    from jaxlm.cli.main import main

    out = tmp_path_factory.mktemp("clf") / "quality.bin"
    plays = [f"bundled:corpus/train/{name}.txt" for name in ("hamlet", "twelfth_night", "macbeth")]  # 3 of 8: fast
    assert main(["data", "train-classifier", "--positive", *plays, "--negative", "bundled:curate/noisy",
                 "--out", str(out), "--epoch", "5"]) == 0
    return out


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    from inference_util import random_model

    from jaxlm.checkpoint import save_model
    from jaxlm.config import RunConfig
    from jaxlm.model import ModelConfig

    cfg = ModelConfig(name="tiny_curate", vocab_size=2048, model_dim=64, num_layers=2, head_dim=16,
                      num_query_heads=4, num_kv_heads=2, ffn_dim=128, max_context=128)
    path = tmp_path_factory.mktemp("ppl") / "model"
    save_model(path, RunConfig(model=cfg), random_model(cfg, seed=0),
               extra_files=[resolve_path("bundled:tokenizer/tokenizer.model")])
    return path


def _scored_corpus(tmp_path: Path) -> Path:
    root = tmp_path / "corpus"
    root.mkdir()
    for f in sorted(resolve_path("bundled:corpus/train").glob("*.txt"))[:3]:
        (root / f.name).write_text("\n\n".join(f.read_text().split("\n\n")[:60]))
    ocr = resolve_path("bundled:curate/noisy/britannica_1911_ocr_excerpt.txt").read_text()
    (root / "ocr.txt").write_text(ocr[:20000])
    return root


def test_classifier_and_perplexity_scores_same_for_workers_and_after_resume(tmp_path, quality_model, tiny_model_dir):
    from jaxlm.cli.data_curate import perplexity_stage

    root = _scored_corpus(tmp_path)
    data = _data([{"path": str(root), "name": "mix", "unit": "paragraph"}], classifier={"model": str(quality_model)},
                 perplexity={"model": str(tiny_model_dir), "max_tokens": 64, "batch_size": 8},
                 near_dedup={"enabled": True}, chunk_docs=64)
    tok = _tok()
    quiet = {"log": lambda *_: None}
    curate(data, tok, tmp_path / "w1", perplexity=perplexity_stage(data, tok), workers=1, **quiet)
    curate(data, tok, tmp_path / "w2", perplexity=perplexity_stage(data, tok), workers=2, **quiet)
    assert curate(data, tok, tmp_path / "r", perplexity=perplexity_stage(data, tok), stop_after_parts=2,
                  **quiet) is None  # a run killed after 2 of 4 parts
    assert len(list((tmp_path / "r" / "parts" / "n1").glob("*.parquet"))) == 2
    summary = curate(data, tok, tmp_path / "r", perplexity=perplexity_stage(data, tok), **quiet)  # resumes
    a1, a2, ar = _attrs(tmp_path / "w1"), _attrs(tmp_path / "w2"), _attrs(tmp_path / "r")
    assert a1 == a2 == ar
    names = _attr_names(tmp_path / "w1")
    quality = np.array([v[names.index("quality")] for v in a1.values()])
    ppl = np.array([v[names.index("perplexity")] for v in a1.values()])
    source_ocr = np.array(["ocr.txt" in v[names.index("file")] for v in a1.values()])
    assert np.isfinite(ppl).all() and (ppl > 1).all() and summary["perplexity_tokens_per_s"] > 0
    assert quality[~source_ocr].mean() > 0.8 > 0.3 > quality[source_ocr].mean()  # it tells plays from OCR


def test_rethreshold_from_attributes_without_rescoring(tmp_path, quality_model, monkeypatch):
    from jaxlm.data.curate import attributes

    root = _scored_corpus(tmp_path)
    src = [{"path": str(root), "name": "mix", "unit": "paragraph"}]
    loose = _data(src, classifier={"model": str(quality_model), "min_score": 0.0})
    first = curate(loose, _tok(), tmp_path / "out", log=lambda *_: None)
    monkeypatch.setattr(attributes, "score_chunk", lambda *a: pytest.fail("rescored"))
    strict = _data(src, classifier={"model": str(quality_model), "min_score": 0.9})
    second = curate(strict, _tok(), tmp_path / "out", from_attributes=True, log=lambda *_: None)
    assert second["documents"] == first["documents"] and second["kept"] < first["kept"]
    # the curated shards are a data source, as the trainer and `jaxlm data prepare` read them
    from jaxlm.data import make_eval_iterator

    cfg = from_dict(DataConfig, {"sources": [{"path": str(tmp_path / "out" / "curated" / "mix"), "name": "c"}]})
    it = make_eval_iterator(cfg, _tok(), seq_len=64, batch_size=4, sources_=cfg.sources)
    assert sum(int(b["loss_mask"].sum()) for b in it) > 0
    it.close()
    # another corpus: its attributes are refused (fingerprint)
    (root / "ocr.txt").write_text("changed")
    with pytest.raises(JaxlmError, match="another corpus"):
        curate(strict, _tok(), tmp_path / "out", from_attributes=True, log=lambda *_: None)


def test_bad_input_one_line_exit_2(tmp_path, capsys, quality_model, tiny_model_dir):
    from jaxlm.cli.main import main

    root = _scored_corpus(tmp_path)
    base = ["data", "curate", "default", "--set", f"data.sources=[{{path: {root}, unit: paragraph}}]"]

    def fails(*extra, match):
        capsys.readouterr()
        assert main(base + ["--out", str(tmp_path / "o"), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and match in err, err
        assert not (tmp_path / "o").exists()  # nothing written

    fails("--set", "data.curate.classifier.min_score=1.5", match="min_score is 1.5, must be in [0, 1]")
    fails("--set", "data.curate.near_dedup.threshold=0", match="threshold is 0")
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not a model at all")
    fails("--set", f"data.curate.classifier.model={junk}", match="not a fastText model")
    other = tmp_path / "other.bin"
    other.write_bytes(quality_model.read_bytes()[:-10])
    classifier.sidecar(other).write_text(classifier.sidecar(quality_model).read_text())
    fails("--set", f"data.curate.classifier.model={other}", match="does not match")
    # a perplexity model whose tokenizer encodes differently (a byte-level tiktoken rank file)
    import base64
    import shutil

    odd = tmp_path / "odd_model"
    shutil.copytree(tiny_model_dir, odd)
    (odd / "tokenizer.model").write_text("".join(f"{base64.b64encode(bytes([i])).decode()} {i}\n" for i in range(256)))
    fails("--set", f"data.curate.perplexity.model={odd}", match="another tokenizer")
