"""Packing and padding: every token once per epoch, segment ids, positions, targets and loss mask."""

import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from jaxlm.assets import ASSETS_DIR
from jaxlm.data import DataConfig, SourceConfig, make_batch_iterator, make_eval_iterator, packing
from jaxlm.tokenizer import load_tokenizer

PLAY = ASSETS_DIR / "corpus" / "train" / "macbeth.txt"


@pytest.fixture(scope="module")
def docs_dir(tmp_path_factory):
    """Speeches of one play as JSONL documents of very different lengths (1 to ~400 tokens)."""
    root = tmp_path_factory.mktemp("docs")
    speeches = [p for p in PLAY.read_text().split("\n\n") if p.strip()][:400]
    for part in range(3):
        with open(root / f"part{part}.jsonl", "w") as f:
            for s in speeches[part::3]:
                f.write(json.dumps({"text": s}) + "\n")
    return root


def doc_tokens(tok, docs_dir):
    out = []
    for part in range(3):
        for line in (docs_dir / f"part{part}.jsonl").read_text().splitlines():
            out.append([tok.bos_id] + tok.encode(json.loads(line)["text"]) + [tok.eos_id])
    return out


def check_rows(batch, pad_id):
    """Structural invariants of every row of a batch; returns the list of (segment tokens) pieces."""
    pieces = []
    for inp, tgt, seg, pos, mask in zip(*(batch[k] for k in ("inputs", "targets", "segment_ids", "positions",
                                                                 "loss_mask"))):
        assert inp.dtype == tgt.dtype == seg.dtype == pos.dtype == np.int32 and mask.dtype == np.float32
        real = seg > 0
        n = int(real.sum())
        assert real[:n].all() and not real[n:].any()  # padding only at the end
        assert (inp[n:] == pad_id).all() and (mask[n:] == 0).all()
        starts = np.flatnonzero(np.diff(np.concatenate([[0], seg[:n]])) != 0)
        assert list(seg[starts]) == list(range(1, len(starts) + 1))  # 1, 2, 3 ... per piece
        for a, b in zip(starts, list(starts[1:]) + [n]):
            assert list(pos[a:b]) == list(range(b - a))  # positions restart per piece
            # inside a piece the target is the next input; loss only where the target is real
            assert (tgt[a:b - 1] == inp[a + 1:b]).all() and (mask[a:b - 1] == 1).all()
            pieces.append((inp[a:b].tolist(), tgt[b - 1], mask[b - 1]))
    return pieces


@pytest.mark.parametrize("seq_len", [64, 37])
def test_pack_one_epoch_no_token_lost_or_duplicated(tok, docs_dir, seq_len):
    cfg = DataConfig(validation=(SourceConfig(path=str(docs_dir)),), prefetch=2)
    docs = doc_tokens(tok, docs_dir)
    stream, pieces = [], []
    for batch in make_eval_iterator(cfg, tok, seq_len=seq_len, batch_size=4):
        pieces += check_rows(batch, tok.pad_id)
    for toks, _, _ in pieces:
        stream += toks
    flat = [t for d in docs for t in d]
    assert len(stream) == len(flat) and stream == flat  # same tokens, same order, nothing lost or doubled
    # a piece ending at its document's eos has no target (mask 0); a piece cut by the row end keeps its
    # true next token (mask 1), which is the first token of the continuation
    cut = ends = 0
    for toks, last_target, last_mask in pieces:
        if toks[-1] == tok.eos_id:
            ends += 1
            assert last_mask == 0
        else:
            cut += 1
            assert last_mask == 1
    assert ends == len(docs) and cut > 0


def test_training_stream_repeats_epochs_in_order_without_shuffle(tok, docs_dir):
    cfg = DataConfig(sources=(SourceConfig(path=str(docs_dir)),), shuffle=False, prefetch=0)
    flat = [t for d in doc_tokens(tok, docs_dir) for t in d]
    it = make_batch_iterator(cfg, tok, seq_len=128, batch_size=8, seed=0)
    got = []
    while len(got) < 2 * len(flat) + 1000:
        batch = next(it)
        check_rows(batch, tok.pad_id)
        assert (batch["segment_ids"] > 0).all()  # packed training rows are always full
        got += batch["inputs"].ravel().tolist()
    assert got[:len(flat)] == flat and got[len(flat):2 * len(flat)] == flat
    assert it.stats()["documents"] >= 2 * len(doc_tokens(tok, docs_dir))


def test_window_shuffle_permutes_rows_within_windows_only(tok, docs_dir):
    def rows(window):
        cfg = DataConfig(sources=(SourceConfig(path=str(docs_dir)),), shuffle_window=window, prefetch=0)
        it = make_batch_iterator(cfg, tok, seq_len=32, batch_size=16, seed=3)
        return [tuple(r) for _ in range(8) for r in next(it)["inputs"].tolist()]

    plain, shuffled = rows(1), rows(16)
    assert plain != shuffled
    for w in range(0, len(plain), 16):
        assert sorted(plain[w:w + 16]) == sorted(shuffled[w:w + 16])


def test_pad_mode_one_document_per_row(tok, docs_dir):
    cfg = DataConfig(validation=(SourceConfig(path=str(docs_dir)),), mode="pad", prefetch=0)
    docs = doc_tokens(tok, docs_dir)
    it = make_eval_iterator(cfg, tok, seq_len=48, batch_size=5)
    rows = []
    for batch in it:
        check_rows(batch, tok.pad_id)
        for i in range(5):
            rows.append({k: v[i] for k, v in batch.items()})
    rows = [r for r in rows if r["segment_ids"].any()]
    assert len(rows) == len(docs)
    lost = 0
    for row, doc in zip(rows, docs):
        n = min(len(doc), 48)
        assert row["inputs"][:n].tolist() == doc[:n] and set(row["segment_ids"][:n]) == {1}
        assert row["loss_mask"].sum() == min(len(doc) - 1, 48)  # truncated rows keep their last target
        lost += len(doc) - n
    assert it.stats()["truncated_tokens"] == lost > 0


def test_eval_num_batches_pads_with_empty_batches(tok, docs_dir):
    cfg = DataConfig(validation=(SourceConfig(path=str(docs_dir)),), prefetch=0)
    full = list(make_eval_iterator(cfg, tok, seq_len=256, batch_size=4))
    more = list(make_eval_iterator(cfg, tok, seq_len=256, batch_size=4, num_batches=len(full) + 2))
    assert len(more) == len(full) + 2
    assert all(not b["loss_mask"].any() and not b["segment_ids"].any() for b in more[-2:])
    assert all((a["inputs"] == b["inputs"]).all() for a, b in zip(full, more))


class NumberTokenizer:
    """Text "5 9 12" <-> ids [5, 9, 12]: documents with exactly known tokens (bos 1, eos 2, pad 0)."""

    vocab_size, bos_id, eos_id, pad_id = 1000, 1, 2, 0

    def encode(self, text, add_bos=False, add_eos=False):
        return [int(t) for t in text.split()]


@settings(max_examples=25, deadline=None)
@given(docs=st.lists(st.lists(st.integers(3, 999), min_size=1, max_size=40), min_size=1, max_size=12),
       seq_len=st.integers(1, 24), batch_size=st.integers(1, 3), mode=st.sampled_from(["pack", "pad"]))
def test_rows_match_the_documents_for_any_lengths(tmp_path_factory, docs, seq_len, batch_size, mode):
    root = tmp_path_factory.mktemp("num")
    (root / "d.jsonl").write_text("".join(json.dumps({"text": " ".join(map(str, d))}) + "\n" for d in docs))
    cfg = DataConfig(validation=(SourceConfig(path=str(root)),), mode=mode, prefetch=0)
    tok = NumberTokenizer()
    full = [[1] + d + [2] for d in docs]
    pieces = []
    for batch in make_eval_iterator(cfg, tok, seq_len=seq_len, batch_size=batch_size):
        pieces += check_rows(batch, tok.pad_id)
    if mode == "pack":
        assert [t for p, _, _ in pieces for t in p] == [t for d in full for t in d]
    else:
        assert [p for p, _, _ in pieces] == [d[:seq_len] for d in full]
        for (p, last_target, last_mask), d in zip(pieces, full):
            assert last_mask == (len(d) > seq_len) and (not last_mask or last_target == d[seq_len])


def test_bundled_paths_do_not_depend_on_the_working_directory(tmp_path, monkeypatch):
    from jaxlm.data.sources import list_files

    monkeypatch.chdir(tmp_path)
    assert load_tokenizer("bundled:tokenizer").vocab_size == 2048
    names = [f.name for f in list_files(SourceConfig(path="bundled:corpus/valid"))]
    assert names == ["as_you_like_it.txt", "comedy_of_errors.txt"]


def test_packed_row_equals_placing_each_piece():
    """packing.packed_row (a row in a few array operations) against `place`, piece by piece."""
    rng = np.random.default_rng(0)
    for _ in range(200):
        seq, pieces, at = int(rng.integers(1, 40)), [], 0
        while at < seq and rng.random() < 0.9:
            doc = rng.integers(4, 100, size=int(rng.integers(1, 12))).astype(np.int32)
            off = int(rng.integers(0, len(doc)))
            n = min(seq - at, len(doc) - off)
            pieces.append((doc, off, n))
            at += n
        ref = packing.empty_row(seq, 3)
        at = 0
        for segment, (doc, off, n) in enumerate(pieces, 1):
            packing.place(ref, at, doc, off, n, segment)
            at += n
        got = packing.packed_row(pieces, seq, 3)
        for f in packing.FIELDS:
            np.testing.assert_array_equal(got[f], ref[f], err_msg=f)
            assert got[f].dtype == ref[f].dtype
