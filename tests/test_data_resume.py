"""Exact resume, mixtures and phases, determinism and per-process shards."""

import hashlib
import json

import numpy as np
import pytest

from jaxlm.assets import ASSETS_DIR
from jaxlm.config.loader import from_dict
from jaxlm.data import DataConfig, SourceConfig, make_batch_iterator, make_eval_iterator
from jaxlm.errors import ConfigError

TRAIN = ASSETS_DIR / "corpus" / "train"


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    """`words`: speeches as JSONL (letters); `numbers`: text files of digits only; duplicates included."""
    root = tmp_path_factory.mktemp("mix")
    speeches = [p for p in (TRAIN / "macbeth.txt").read_text().split("\n\n") if len(p) > 40][:300]
    (root / "words").mkdir()
    with open(root / "words" / "a.jsonl", "w") as f:
        for s in speeches + speeches[:20]:  # 20 exact duplicates
            f.write(json.dumps({"text": s}) + "\n")
    (root / "numbers").mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        paras = [" ".join(str(x) for x in rng.integers(0, 10**6, size=rng.integers(5, 60))) for _ in range(40)]
        (root / "numbers" / f"n{i}.txt").write_text("\n\n".join(paras))
    return root


def mix_config(corpora, **kw):
    data = {"sources": [{"path": str(corpora / "words"), "name": "words"},
                        {"path": str(corpora / "numbers"), "name": "numbers", "unit": "paragraph"}],
            "phases": [{"start_step": 0, "weights": {"words": 1.0}},
                       {"start_step": 5, "weights": {"words": 0.3, "numbers": 0.7}}],
            "filters": {"min_chars": 30, "dedup": True}, "shuffle_window": 8}
    data.update(kw)
    return from_dict(DataConfig, data)


def batch_hash(batch) -> str:
    h = hashlib.sha256()
    for k in sorted(batch):
        h.update(k.encode() + batch[k].tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("mode", ["pack", "pad"])
def test_resume_at_random_step_gives_the_same_remaining_stream(tok, corpora, mode):
    cfg = mix_config(corpora, mode=mode, prefetch=3)
    total = 60
    it = make_batch_iterator(cfg, tok, seq_len=48, batch_size=4, seed=11)
    reference = [batch_hash(next(it)) for _ in range(total)]
    final_state = it.get_state()
    for stop in np.random.default_rng(5).integers(1, total - 1, size=3).tolist() + [5]:
        it = make_batch_iterator(cfg, tok, seq_len=48, batch_size=4, seed=11)
        head = [batch_hash(next(it)) for _ in range(stop)]
        state = json.loads(json.dumps(it.get_state()))  # must survive a JSON round trip
        assert len(json.dumps(state)) < 4000  # small: positions and counters, no tokens
        it.close()
        resumed = make_batch_iterator(cfg, tok, seq_len=48, batch_size=4, seed=11)
        resumed.set_state(state)
        tail = [batch_hash(next(resumed)) for _ in range(total - stop)]
        assert head + tail == reference, f"stream differs after resuming at step {stop}"
        assert resumed.get_state() == final_state  # positions and drop counters agree too
        resumed.close()


def test_resume_across_epochs_with_prefetch_far_ahead(tok, corpora):
    cfg = mix_config(corpora, prefetch=8, phases=[])
    it = make_batch_iterator(cfg, tok, seq_len=64, batch_size=8, seed=1)
    reference = [batch_hash(next(it)) for _ in range(200)]
    state = None
    it = make_batch_iterator(cfg, tok, seq_len=64, batch_size=8, seed=1)
    for step in range(200):
        if step == 157:
            state = it.get_state()
        batch_hash(next(it))
    assert all(s["anchor"]["reader"]["epoch"] >= 1 for s in state["streams"])  # past an epoch (dedup rebuilt)
    it.set_state(state)  # same iterator, rewound
    assert [batch_hash(next(it)) for _ in range(43)] == reference[157:]


def test_mixture_weights_and_phase_switch(tok, corpora):
    cfg = mix_config(corpora, prefetch=4)
    it = make_batch_iterator(cfg, tok, seq_len=32, batch_size=8, seed=0)
    letters = [0, 0]
    numbers_tokens = words_tokens = at_switch = 0
    for step in range(400):
        batch = next(it)
        for inp, seg in zip(batch["inputs"], batch["segment_ids"]):
            text = tok.decode(inp[seg > 0])
            is_numbers = not any(c.isalpha() for c in text)
            if step < 5:
                assert not is_numbers, f"row from `numbers` at step {step}, before its phase"
            else:
                at_switch += step == 5 and is_numbers
                letters[is_numbers] += 1
                if is_numbers:
                    numbers_tokens += int((seg > 0).sum())
                else:
                    words_tokens += int((seg > 0).sum())
    assert at_switch in (5, 6)  # the first batch of phase 2 already has its 70% share
    share = letters[1] / sum(letters)
    assert abs(share - 0.7) < 0.02 * 0.7, share
    assert abs(numbers_tokens / (numbers_tokens + words_tokens) - 0.7) < 0.02 * 0.7
    stats = it.stats()
    assert stats["dropped_duplicate"] == 20  # the 20 repeated speeches, once in the first epoch


def test_same_seed_same_stream_other_seed_other_order(tok, corpora):
    cfg = mix_config(corpora, prefetch=0)

    def first(seed):
        it = make_batch_iterator(cfg, tok, seq_len=32, batch_size=4, seed=seed)
        return [batch_hash(next(it)) for _ in range(20)]

    assert first(1) == first(1)
    assert first(1) != first(2)


def test_processes_read_disjoint_shards_that_cover_the_corpus(tok, corpora):
    src = (SourceConfig(path=str(corpora / "numbers"), unit="paragraph"),)
    cfg = DataConfig(validation=src, mode="pad", prefetch=0)

    def rows(pi, pc):
        out = []
        for b in make_eval_iterator(cfg, tok, seq_len=256, batch_size=4, process_index=pi, process_count=pc):
            out += [tuple(r[s > 0].tolist()) for r, s in zip(b["inputs"], b["segment_ids"]) if s.any()]
        return out

    whole, p0, p1, p2 = rows(0, 1), rows(0, 3), rows(1, 3), rows(2, 3)
    assert len(whole) == 160 and sorted(p0 + p1 + p2) == sorted(whole)
    assert not set(p0) & set(p1) and not set(p1) & set(p2)


def test_config_errors():
    with pytest.raises(ConfigError, match="unknown sources"):
        from_dict(DataConfig, {"sources": [{"path": "x", "name": "a"}],
                               "phases": [{"start_step": 0, "weights": {"b": 1}}]})
    with pytest.raises(ConfigError, match="must begin at 0"):
        from_dict(DataConfig, {"sources": [{"path": "x", "name": "a"}],
                               "phases": [{"start_step": 3, "weights": {"a": 1}}]})
    with pytest.raises(ConfigError, match="mode must be one of"):
        from_dict(DataConfig, {"mode": "chunk"})
