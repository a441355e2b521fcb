"""Sources (text units, JSONL, Parquet), filters with drop counts, bad input, and `jaxlm data stats`."""

import json
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jaxlm.assets import ASSETS_DIR
from jaxlm.cli.main import main
from jaxlm.data import DataConfig, FilterConfig, SourceConfig, make_batch_iterator, make_eval_iterator
from jaxlm.data.filters import clean_text
from jaxlm.data.sources import DocumentReader, list_files
from jaxlm.errors import JaxlmError

PLAY = ASSETS_DIR / "corpus" / "train" / "macbeth.txt"


def read_all(src: SourceConfig, on_bad_record="skip", shuffle=False):
    counters = Counter()
    reader = DocumentReader(src, list_files(src), seed=0, source_index=0, shuffle=shuffle, repeat=False,
                            on_bad_record=on_bad_record, counters=counters)
    docs = []
    while (d := reader.next_doc()) is not None:
        docs.append(d)
    return docs, counters


def test_text_units(tmp_path):
    (tmp_path / "a.txt").write_text("first line\nsecond line\n\n\nnew para\r\nstill para\n")
    assert read_all(SourceConfig(path=str(tmp_path / "a.txt")))[0] == [
        "first line\nsecond line\n\n\nnew para\r\nstill para\n"]
    assert read_all(SourceConfig(path=str(tmp_path), unit="line"))[0] == [
        "first line", "second line", "new para", "still para"]
    assert read_all(SourceConfig(path=str(tmp_path), unit="paragraph"))[0] == [
        "first line\nsecond line", "new para\r\nstill para"]


def test_parquet_source_and_resume_inside_a_file(tmp_path):
    texts = [f"document number {i} " * (i % 7 + 1) for i in range(2500)]
    table = pa.table({"id": list(range(2500)), "content": texts[:1200] + [None] + texts[1201:]})
    pq.write_table(table, tmp_path / "shard.parquet", row_group_size=700)
    src = SourceConfig(path=str(tmp_path), text_field="content")
    docs, counters = read_all(src)
    assert docs == texts[:1200] + texts[1201:] and counters["missing_field"] == 1
    reader = DocumentReader(src, list_files(src), seed=0, source_index=0, shuffle=False, repeat=False,
                            on_bad_record="skip", counters=Counter())
    for _ in range(1500):
        reader.next_doc()
    state = reader.get_state()
    rest = [reader.next_doc() for _ in range(300)]
    reader.set_state(state)
    assert [reader.next_doc() for _ in range(300)] == rest  # restarts mid-row-group, at the exact row
    with pytest.raises(JaxlmError, match="no column 'text'"):
        read_all(SourceConfig(path=str(tmp_path)), on_bad_record="error")


def test_bad_jsonl_lines_skipped_and_counted_or_stopped(tmp_path, tok):
    good = [{"text": f"a good document {i}"} for i in range(5)]
    lines = [json.dumps(good[0]), "{not json", json.dumps(good[1]), json.dumps({"body": "no text field"}),
             json.dumps(good[2]), json.dumps({"text": 17}), "", json.dumps(good[3]), "[1, 2]", json.dumps(good[4])]
    (tmp_path / "d.jsonl").write_text("\n".join(lines) + "\n")
    docs, counters = read_all(SourceConfig(path=str(tmp_path)))
    assert docs == [g["text"] for g in good]
    assert counters == Counter({"bad_json": 1, "missing_field": 3})
    with pytest.raises(JaxlmError, match=r"d.jsonl at byte \d+: line is not JSON"):
        read_all(SourceConfig(path=str(tmp_path)), on_bad_record="error")
    # through the whole pipeline: the iterator reports the counts and keeps going
    cfg = DataConfig(validation=(SourceConfig(path=str(tmp_path)),), prefetch=0)
    it = make_eval_iterator(cfg, tok, seq_len=16, batch_size=2)
    list(it)
    assert it.stats()["bad_json"] == 1 and it.stats()["missing_field"] == 3 and it.stats()["documents"] == 5


def test_bad_files_non_utf8_empty_unreadable(tmp_path, tok):
    (tmp_path / "ok.txt").write_text("a fine line\nanother fine line\n")
    (tmp_path / "latin1.txt").write_bytes("caf\u00e9 au lait\nplain ascii line\n".encode("latin-1"))
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "dangling.txt").symlink_to(tmp_path / "gone.txt")
    docs, counters = read_all(SourceConfig(path=str(tmp_path), unit="line"))
    assert sorted(docs) == ["a fine line", "another fine line", "plain ascii line"]
    assert counters == Counter({"non_utf8": 1, "empty_file": 1, "unreadable_file": 1})
    docs, counters = read_all(SourceConfig(path=str(tmp_path), unit="file"))
    assert docs == ["a fine line\nanother fine line\n"] and counters["non_utf8"] == 1
    with pytest.raises(JaxlmError, match="latin1.txt at byte 3 is not UTF-8"):
        read_all(SourceConfig(path=str(tmp_path / "latin1.txt")), on_bad_record="error")
    # with on_bad_record: error, empty/unreadable files stop the run at start, not mid-epoch
    cfg = DataConfig(sources=(SourceConfig(path=str(tmp_path)),), on_bad_record="error")
    with pytest.raises(JaxlmError, match="cannot read .*dangling.txt|empty.txt is empty"):
        make_batch_iterator(cfg, tok, seq_len=16, batch_size=2, seed=0)
    with pytest.raises(JaxlmError, match="does not exist"):
        make_batch_iterator(DataConfig(sources=(SourceConfig(path=str(tmp_path / "nope")),)), tok,
                            seq_len=16, batch_size=2, seed=0)


def test_source_whose_documents_are_all_filtered_is_an_error_not_a_hang(tmp_path, tok):
    (tmp_path / "short.txt").write_text("tiny\n")
    cfg = DataConfig(sources=(SourceConfig(path=str(tmp_path)),), filters=FilterConfig(min_chars=100))
    it = make_batch_iterator(cfg, tok, seq_len=16, batch_size=2, seed=0)
    with pytest.raises(JaxlmError, match="every document dropped"):
        next(it)


def test_openelm_filters_count_each_drop(tmp_path, tok):
    speeches = [p for p in PLAY.read_text().split("\n\n") if p.strip()]
    long_doc = "\n\n".join(speeches[40:90])  # > 256 tokens
    mid_doc = " ".join(["word"] * 60)  # 299 chars, 60 tokens: passes chars, fails tokens
    punct_doc = "!?., " * 50 + "so few"  # 256 raw chars, 6 after cleaning
    assert len(clean_text(mid_doc)) >= 200 and len(clean_text(punct_doc)) < 200
    assert len(tok.encode(long_doc)) >= 256 and len(tok.encode(mid_doc)) < 256
    docs = [long_doc, mid_doc, punct_doc, long_doc, "short", long_doc + " x"]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    cfg = DataConfig(validation=(SourceConfig(path=str(tmp_path)),), filters=FilterConfig(preset="openelm"))
    it = make_eval_iterator(cfg, tok, seq_len=128, batch_size=2)
    n_tokens = sum(int((b["segment_ids"] > 0).sum()) for b in it)
    stats = it.stats()
    assert stats["documents"] == 2
    assert (stats["dropped_duplicate"], stats["dropped_too_few_chars"], stats["dropped_too_few_tokens"]) == (1, 2, 1)
    assert n_tokens == stats["tokens"] == len(tok.encode(long_doc)) + len(tok.encode(long_doc + " x")) + 4


def test_data_stats_cli(tmp_path, capsys):
    (tmp_path / "d.jsonl").write_text(json.dumps({"text": PLAY.read_text()[:5000]}) + "\n{oops\n")
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"inherit: tiny_layerwise\ndata:\n  sources:\n    - path: {tmp_path / 'd.jsonl'}\n")
    assert main(["data", "stats", str(cfg), "--seq-len", "64"]) == 0
    out = capsys.readouterr().out
    assert "documents kept: 1" in out and "bad_json 1" in out and "tokens/s" in out
    assert main(["data", "stats", str(cfg), "--set", "model.vocab_size=4096"]) == 2
    assert "does not match the tokenizer" in capsys.readouterr().err


def test_pipeline_with_a_tiktoken_tokenizer(tmp_path):
    from jaxlm.tokenizer import TiktokenTokenizer

    tok = TiktokenTokenizer({bytes([i]): i for i in range(256)})  # bytes only; Llama 3 specials from 256
    assert (tok.bos_id, tok.eos_id, tok.vocab_size) == (256, 257, 512)
    text = "Fair is foul, and foul is fair — ünïcödé"
    (tmp_path / "d.jsonl").write_text(json.dumps({"text": text}) + "\n")
    cfg = DataConfig(validation=(SourceConfig(path=str(tmp_path)),))
    (batch,) = list(make_eval_iterator(cfg, tok, seq_len=64, batch_size=1))
    n = len(text.encode()) + 2
    assert batch["inputs"][0, 0] == 256 and batch["inputs"][0, n - 1] == 257
    assert tok.decode(batch["inputs"][0, 1:n - 1]) == text and batch["loss_mask"][0].sum() == n - 1


def test_fifos_and_symlink_loops_are_skipped_and_counted_not_waited_on(tmp_path):
    import os
    import shutil

    from cli_helpers import jaxlm

    corpus = tmp_path / "corpus"
    (corpus / "sub").mkdir(parents=True)
    shutil.copy(PLAY, corpus / "sub" / "macbeth.txt")
    os.mkfifo(corpus / "pipe.txt")  # opening it would wait for a writer: forever
    (corpus / "sub" / "up").symlink_to(corpus)  # two loops: a glob's `**` through both doubles per level
    (corpus / "again").symlink_to(corpus)
    skipped = Counter()
    assert list_files(SourceConfig(path=str(corpus)), skipped) == [corpus / "sub" / "macbeth.txt"]
    assert skipped == Counter(not_regular_file=1)
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"inherit: tiny_layerwise\ndata:\n  sources:\n    - {{path: {corpus}, name: folder}}\n"
                   f"    - {{path: '{corpus}/**/*.txt', name: glob}}\n")
    r = jaxlm("data", "stats", cfg, "--seq-len", "64", timeout=60)
    assert r.returncode == 0, r.stderr
    assert "documents kept: 2" in r.stdout and "not_regular_file 2" in r.stdout, r.stdout
