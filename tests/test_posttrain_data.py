"""Chat data for post-training: the Hugging Face record formats read from JSONL and Parquet, the bad
records refused with one line naming the record and the fix, rows packed without cross-talk (segment ids,
positions restarting, the loss on assistant targets only), too-long examples dropped or truncated and
counted, and the batch iterator resuming exactly from its state."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jaxlm.errors import JaxlmError
from jaxlm.posttrain import rows
from jaxlm.posttrain.batches import ChatBatches, ChatExamples, chat_eval_pass, chat_template, with_chat_template
from jaxlm.posttrain.config import PostTrainConfig
from jaxlm.posttrain.formats import load_chat_set

TEMPLATE = "bundled:chat/turns.jinja"
USER = {"role": "user", "content": "Continue this speech by ROMEO: But soft, what light"}
ASSISTANT = {"role": "assistant", "content": "It is the east, and Juliet is the sun."}


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def test_formats_become_messages_and_pairs(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    sft = [{"messages": [{"role": "system", "content": "Be brief."}, USER, ASSISTANT]},
           {"prompt": USER["content"], "completion": ASSISTANT["content"]},
           {"prompt": [USER], "completion": [ASSISTANT]}]
    pq.write_table(pa.Table.from_pylist(sft[2:]), tmp_path / "sft.parquet")  # message lists
    conversations = load_chat_set(write_jsonl(tmp_path / "sft.jsonl", sft), preference=False).examples
    assert conversations[1] == conversations[2] == (USER, ASSISTANT) and len(conversations[0]) == 3
    assert load_chat_set(str(tmp_path / "sft.parquet"), preference=False).examples == conversations[2:]
    pairs = [{"prompt": USER["content"], "chosen": "Arise, fair sun.", "rejected": "Out, damned spot!"},
             {"prompt": [USER], "chosen": [ASSISTANT], "rejected": [ASSISTANT]}]
    chat_set = load_chat_set(write_jsonl(tmp_path / "pairs.jsonl", pairs), preference=True)
    assert len(chat_set.examples) == 1 and chat_set.dropped_identical == 1
    assert chat_set.examples[0].rejected == ({"role": "assistant", "content": "Out, damned spot!"},)


@pytest.mark.parametrize("records,preference,message", [
    ([{"messages": [USER]}], False, "record 1 has no assistant turn"),
    ([{"messages": [USER, {"role": "robot", "content": "beep"}]}], False, "unknown role 'robot'"),
    ([{"prompt": "a", "chosen": "b", "rejected": "c"}], False, "is a preference file"),
    ([{"messages": [USER, ASSISTANT]}], True, "is not a preference file"),
    ([{"prompt": "a", "chosen": "b", "rejected": "b"}], True, "chosen identical to rejected"),
    ([{"text": "plain"}], False, "neither \"messages\""),
])
def test_bad_records_name_the_problem(tmp_path, records, preference, message):
    with pytest.raises(JaxlmError, match=message):
        load_chat_set(write_jsonl(tmp_path / "d.jsonl", records), preference)


def test_packed_rows_never_cross_examples():
    a = (np.array([5, 6, 7, 8], np.int32), np.array([0, 0, 1, 1], bool))
    b = (np.array([9, 10, 11], np.int32), np.array([0, 1, 1], bool))
    row = rows.sft_row([a, b], seq_len=10, pad_id=0)
    assert row["segment_ids"].tolist() == [1, 1, 1, 1, 2, 2, 2, 0, 0, 0]
    assert row["positions"].tolist() == [0, 1, 2, 3, 0, 1, 2, 0, 0, 0]
    # position j predicts token j + 1 of the same example: counted when that token is the assistant's
    assert row["targets"][:7].tolist() == [6, 7, 8, 0, 10, 11, 0]
    assert row["loss_mask"].tolist() == [0, 1, 1, 0, 1, 1, 0, 0, 0, 0]
    assert rows.pack_plan([4, 3, 5, 2], np.array([0, 1, 2, 3]), 8) == [[0, 1], [2, 3]]


def test_too_long_examples_are_dropped_or_truncated_and_counted():
    long = (np.arange(20, dtype=np.int32), np.arange(20) >= 5)
    counts = {}
    assert rows.fit(long, 10, "drop", counts) is None
    ids, mask = rows.fit(long, 10, "truncate", counts)
    assert len(ids) == 10 and mask[5:].all() and counts == {"too_long": 2}
    assert rows.fit((np.arange(20, dtype=np.int32), np.arange(20) >= 15), 10, "truncate", counts) is None
    assert counts["no_target"] == 1  # truncation left no answer token


@pytest.fixture(scope="module")
def chat_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("chat")
    records = [{"messages": [{"role": "user", "content": f"Speak line {i}."},
                             {"role": "assistant", "content": "Words, words, words." * (1 + i % 4)}]}
               for i in range(40)]
    return write_jsonl(folder / "sft.jsonl", records)


def test_template_is_required_and_carried(tok, chat_file):
    with pytest.raises(JaxlmError, match="no chat template"):
        chat_template(PostTrainConfig("sft", chat_file), tok)
    template = chat_template(PostTrainConfig("sft", chat_file, chat_template=TEMPLATE), tok)
    carried = with_chat_template(tok, template)
    assert carried.chat_template == template and tok.chat_template is None  # a copy; the original is untouched


def test_batches_resume_exactly_on_any_process_count(tok, chat_file):
    cfg = PostTrainConfig("sft", chat_file, chat_template=TEMPLATE)
    examples = ChatExamples(cfg, tok, chat_file, seq_len=48)
    whole = ChatBatches(examples, 4, seed=1, process_index=0, process_count=1)
    reference = [next(whole) for _ in range(12)]  # several epochs
    resumed = ChatBatches(examples, 4, seed=1, process_index=0, process_count=1)
    resumed.set_state(json.loads(json.dumps({"kind": "chat", "step": 7})))
    np.testing.assert_array_equal(next(resumed)["inputs"], reference[7]["inputs"])
    halves = [ChatBatches(examples, 2, 1, p, 2) for p in range(2)]  # two processes: the same global batch
    for h in halves:
        h.set_state({"kind": "chat", "step": 3})
    np.testing.assert_array_equal(np.concatenate([next(h)["inputs"] for h in halves]), reference[3]["inputs"])
    epoch = sum(1 for _ in chat_eval_pass(examples, 4, 0, 1))
    assert len(list(chat_eval_pass(examples, 4, 0, 1, num_batches=epoch + 2))) == epoch + 2
    assert examples.counts["records"] == 40 and (reference[0]["loss_mask"].sum(axis=1) > 0).all()


def test_plot_draws_the_post_training_metrics(tmp_path):
    from jaxlm.cli.plot import plot

    records = [{"step": s, "loss": 0.69 - s / 100, "tokens_per_s": 1000.0, "rewards/chosen": s / 10,
                "rewards/rejected": -s / 10, "rewards/margins": s / 5, "rewards/accuracies": 0.5 + s / 20,
                **({"val_loss": 0.6, "val_rewards/accuracies": 0.7, "val_rewards/margins": 0.3} if s == 2 else {})}
               for s in (1, 2)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    names = sorted(p.name for p in plot(tmp_path))
    # no token_accuracy: not logged
    assert names == ["loss.png", "reward_accuracy.png", "rewards.png", "throughput.png"]
