"""The README's promise, tried as a careless and as a hostile user would: every bad input and
every fault is one line on stderr and exit status 2, with no traceback, and no pre-existing file
is lost or changed.

Each case runs the real `jaxlm` command in a subprocess against copies of one tiny trained run
(shared by the whole session), a Hugging Face folder converted from it and a LoRA model dir.
Full-disk cases mount a small tmpfs (root only; skipped with the reason otherwise).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import pickle
import shlex
import shutil
import struct
from pathlib import Path

import pytest

from cli_helpers import built_once, jaxlm, small_disk, tiny_run_yaml, tree_digest


# -- the shared inputs ---------------------------------------------------------------------------
@pytest.fixture(scope="session")
def base(tmp_path_factory) -> Path:
    """BASE/run (2 steps, checkpoints 1 and 2), BASE/tiny.yaml, BASE/hf (to-hf of it), BASE/lora."""

    def build(path: Path) -> None:
        path.mkdir()
        yaml_path = tiny_run_yaml(path / "tiny.yaml", path / "run")
        r = jaxlm("train", yaml_path, cwd=path)
        assert r.returncode == 0, r.stderr
        assert jaxlm("convert", "to-hf", "--ckpt", path / "run", "--out", path / "hf").returncode == 0
        _lora_dir(path / "run", path / "lora")

    return built_once(tmp_path_factory, "bad_inputs_base", build)


def _lora_dir(run: Path, out: Path) -> None:
    from jaxlm.checkpoint import load_model, save_model
    from jaxlm.checkpoint.model_dir import tokenizer_files
    from jaxlm.lora.config import LoraConfig
    from jaxlm.variants import model_for

    run_cfg, model = load_model(run)
    cfg = dataclasses.replace(run_cfg, lora=LoraConfig(enabled=True, rank=4))
    save_model(out, cfg, model_for(cfg.model, cfg.quant, cfg.lora, base=model), extra_files=tokenizer_files(run))


# -- preparations: each makes the bad input under TMP (copies, never the shared inputs) ---------
def copy_run(base, tmp):
    shutil.copytree(base / "run", tmp / "run")


def params_files(run: Path, step: int) -> list[Path]:
    return sorted(f for f in (run / "checkpoints" / str(step) / "params").rglob("*") if f.is_file())


def truncate_params(base, tmp):
    copy_run(base, tmp)
    biggest = max(params_files(tmp / "run", 2), key=lambda f: f.stat().st_size)
    biggest.write_bytes(biggest.read_bytes()[:100])


def delete_manifest(base, tmp):
    copy_run(base, tmp)
    (tmp / "run" / "checkpoints" / "2" / "params" / "manifest.ocdbt").unlink()


def delete_metadata(base, tmp):
    copy_run(base, tmp)
    (tmp / "run" / "checkpoints" / "2" / "params" / "_METADATA").unlink()


def garbage_config_yaml(base, tmp):
    copy_run(base, tmp)
    (tmp / "run" / "config.yaml").write_text("model: [unclosed\n")


def unknown_key_config_yaml(base, tmp):
    copy_run(base, tmp)
    p = tmp / "run" / "config.yaml"
    p.write_text(p.read_text().replace("model:\n", "model:\n  num_layerz: 3\n", 1))


def wrong_shape_config_yaml(base, tmp):
    copy_run(base, tmp)
    p = tmp / "run" / "config.yaml"
    p.write_text(p.read_text().replace("num_layers: 2", "num_layers: 3"))


def no_config_yaml(base, tmp):
    copy_run(base, tmp)
    (tmp / "run" / "config.yaml").unlink()


def garbage_tokenizer(base, tmp):
    copy_run(base, tmp)
    (tmp / "run" / "tokenizer.model").write_bytes(b"\x00garbage" * 50)


def garbage_metrics(base, tmp):
    copy_run(base, tmp)
    with open(tmp / "run" / "metrics.jsonl", "a") as f:
        f.write("{not json\n")


def bad_metrics_record(base, tmp):
    copy_run(base, tmp)
    (tmp / "run" / "metrics.jsonl").write_text('{"loss": 1.0}\n3\n')


def truncate_every_opt_state(base, tmp):
    copy_run(base, tmp)
    for step in (1, 2):
        for f in (tmp / "run" / "checkpoints" / str(step) / "opt_state").rglob("*"):
            if f.is_file() and f.stat().st_size > 1024:
                f.write_bytes(f.read_bytes()[:50])
    tiny_run_yaml(tmp / "resume.yaml", tmp / "run", steps=3)


def a_file(base, tmp):
    (tmp / "afile").write_text("not a folder")


def copy_hf(base, tmp):
    shutil.copytree(base / "hf", tmp / "hf")


def truncate_safetensors(base, tmp):
    copy_hf(base, tmp)
    p = tmp / "hf" / "model.safetensors"
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def tiny_safetensors(base, tmp):
    copy_hf(base, tmp)
    (tmp / "hf" / "model.safetensors").write_bytes(b"\x05\x00")


def garbage_safetensors(base, tmp):
    copy_hf(base, tmp)
    (tmp / "hf" / "model.safetensors").write_bytes(struct.pack("<Q", 40) + b"{this is not a json header}" + b"x" * 64)


def _edit_hf_config(tmp, fn):
    p = tmp / "hf" / "config.json"
    p.write_text(fn(p.read_text()))


def hf_missing_hidden_size(base, tmp):
    copy_hf(base, tmp)
    _edit_hf_config(tmp, lambda t: json.dumps({k: v for k, v in json.loads(t).items() if k != "hidden_size"
                                               and k != "model_dim"}))


def hf_missing_num_layers(base, tmp):
    copy_hf(base, tmp)
    _edit_hf_config(tmp, lambda t: json.dumps({k: v for k, v in json.loads(t).items()
                                               if k not in ("num_transformer_layers", "num_hidden_layers")}))


def hf_bad_json(base, tmp):
    copy_hf(base, tmp)
    _edit_hf_config(tmp, lambda t: t[:-10])


def hf_json_list(base, tmp):
    copy_hf(base, tmp)
    _edit_hf_config(tmp, lambda t: "[1, 2]")


def hf_unknown_model_type(base, tmp):
    copy_hf(base, tmp)
    _edit_hf_config(tmp, lambda t: json.dumps({**json.loads(t), "model_type": ["gpt2"]}))


def hf_wrong_type_value(base, tmp):
    copy_hf(base, tmp)
    _edit_hf_config(tmp, lambda t: json.dumps({**json.loads(t), "vocab_size": "many"}))


def hf_no_weights(base, tmp):
    copy_hf(base, tmp)
    (tmp / "hf" / "model.safetensors").unlink()


def hf_bad_index(base, tmp):
    copy_hf(base, tmp)
    (tmp / "hf" / "model.safetensors.index.json").write_text('{"weight_map": 3}')


def hf_index_missing_shard(base, tmp):
    copy_hf(base, tmp)
    (tmp / "hf" / "model.safetensors.index.json").write_text('{"weight_map": {"lm_head.weight": "nope.safetensors"}}')


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def hf_pickle_only(base, tmp):
    copy_hf(base, tmp)
    (tmp / "hf" / "model.safetensors").unlink()
    (tmp / "hf" / "pytorch_model.bin").write_bytes(pickle.dumps({"x": _Evil()}))


def hf_truncated_pickle(base, tmp):
    copy_hf(base, tmp)
    (tmp / "hf" / "model.safetensors").unlink()
    (tmp / "hf" / "pytorch_model.bin").write_bytes(b"PK\x03\x04 truncated zip")


def bad_yaml(base, tmp):
    (tmp / "bad.yaml").write_text("train: {steps: 3\n")


def list_yaml(base, tmp):
    (tmp / "bad.yaml").write_text("- 1\n- 2\n")


def non_utf8_yaml(base, tmp):
    (tmp / "bad.yaml").write_bytes(b"train:\n  lr: \xff\xfe\n")


def duplicate_key_yaml(base, tmp):
    (tmp / "bad.yaml").write_text("inherit: tiny_uniform\ntrain: {steps: 3}\ntrain: {steps: 4}\n")


def loop_yaml(base, tmp):
    (tmp / "a.yaml").write_text("inherit: b.yaml\n")
    (tmp / "b.yaml").write_text("inherit: a.yaml\n")


def non_utf8_corpus(base, tmp):
    (tmp / "corpus").mkdir()
    for i in range(2):
        (tmp / "corpus" / f"{i}.txt").write_bytes(bytes(range(128, 256)) * 40)


def empty_corpus(base, tmp):
    (tmp / "corpus").mkdir()
    (tmp / "corpus" / "a.txt").write_bytes(b"")


def bad_jsonl(base, tmp):
    (tmp / "corpus").mkdir()
    (tmp / "corpus" / "a.jsonl").write_text('{"text": "ok"\n[1, 2]\n{"body": "no text field"}\n')


def bad_parquet(base, tmp):
    (tmp / "corpus").mkdir()
    (tmp / "corpus" / "a.parquet").write_bytes(b"PAR1" + b"\x00" * 64 + b"PAR1")


def non_utf8_text(base, tmp):
    (tmp / "a.txt").write_bytes(b"\xff\xfe\xfa" * 100)


def existing_out(base, tmp):
    (tmp / "out").mkdir()
    (tmp / "out" / "keep.txt").write_text("precious")


def link_to_run(base, tmp):
    copy_run(base, tmp)
    (tmp / "link").symlink_to(tmp / "run")


def copy_lora(base, tmp):
    shutil.copytree(base / "lora", tmp / "lora")


def run_and_hf(base, tmp):
    copy_run(base, tmp)
    copy_hf(base, tmp)


def text_corpus(base, tmp):
    (tmp / "corpus").mkdir()
    (tmp / "corpus" / "a.txt").write_text("Fair is foul, and foul is fair.\n" * 50)


def bad_line_after_good_ones(base, tmp):  # the reader fails after tokenizer workers have started
    (tmp / "corpus").mkdir()
    (tmp / "corpus" / "a.txt").write_bytes(b"Fair is foul, and foul is fair.\n" * 300 + b"\xff\xfe not UTF-8\n")


def hf_tokenizer_too_big(base, tmp):  # 200 more ids than the embedding's 2048 rows
    copy_hf(base, tmp)
    p = tmp / "hf" / "tokenizer.json"
    tok = json.loads(p.read_text())
    tok["added_tokens"] += [{"id": 2048 + i, "content": f"<extra_{i}>", "single_word": False, "lstrip": False,
                             "rstrip": False, "normalized": False, "special": True} for i in range(200)]
    p.write_text(json.dumps(tok))


def string_loss_and_earlier_plot(base, tmp):  # the earlier plot must survive the failed replot
    copy_run(base, tmp)
    (tmp / "run" / "metrics.jsonl").write_text('{"step": 1, "loss": 2.5}\n{"step": 2, "loss": "high"}\n')
    (tmp / "run" / "plots").mkdir()
    (tmp / "run" / "plots" / "loss.png").write_bytes(b"an earlier plot")


def bad_template(base, tmp):
    (tmp / "bad.jinja").write_text("{% for m in messages %}{{ m.content }\n")


def quantized_model(base, tmp):
    from jaxlm.checkpoint.quantized import quantize_model_dir
    from jaxlm.quant.config import QuantConfig

    quantize_model_dir(base / "run", tmp / "q", QuantConfig(bits=8), log=lambda *_: None)


# config fields
def inherit_a_number(base, tmp):
    (tmp / "bad.yaml").write_text("inherit: 3\ntrain: {steps: 3}\n")


# found by benchmarks/probe_inputs.py
def yaml_alias_bomb(base, tmp):  # 9**9 strings as one value: naming it in the error must not expand it
    anchors = ", ".join(f"&{c} [{', '.join(['*' + p] * 9)}]" for p, c in zip("abcdefgh", "bcdefghi"))
    first = "&a [x, x, x, x, x, x, x, x, x]"
    (tmp / "bad.yaml").write_text(f"inherit: tiny_uniform\nmodel:\n  name: [{first}, {anchors}]\n")


def a_fifo(base, tmp):  # opening it for reading would block for ever
    import os

    os.mkfifo(tmp / "fifo")


def range_template(base, tmp):
    (tmp / "t.jinja").write_text("{% for i in range(10**9) %}{{ i }}{% endfor %}")


def hf_only_lm_head(base, tmp):  # the tied-head comparison used to read the missing embedding (KeyError)
    copy_hf(base, tmp)
    header = json.dumps({"lm_head.weight": {"dtype": "F32", "shape": [3, 3], "data_offsets": [0, 36]}}).encode()
    (tmp / "hf" / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 36)


# post-training chat data (jaxlm.posttrain)
def _chat_file(tmp, records):
    (tmp / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


_USER = {"role": "user", "content": "Continue this speech by ROMEO: But soft"}


def chat_no_assistant(base, tmp):
    _chat_file(tmp, [{"messages": [_USER]}])


def chat_unknown_role(base, tmp):
    _chat_file(tmp, [{"messages": [_USER, {"role": "ghost", "content": "Remember me."}]}])


def chat_sft_records(base, tmp):
    _chat_file(tmp, [{"messages": [_USER, {"role": "assistant", "content": "What light breaks?"}]}])


def chat_pairs(base, tmp):
    _chat_file(tmp, [{"prompt": "Speak.", "chosen": "What light breaks?", "rejected": "Out, damned spot!"}])


def chat_identical_pairs(base, tmp):
    _chat_file(tmp, [{"prompt": "Speak.", "chosen": "Out, spot!", "rejected": "Out, spot!"}] * 3)


TRAIN = "train {base}/tiny.yaml --set train.out_dir={tmp}/new"
SRC = "--set 'data.sources=[{{path: {tmp}/corpus}}]'"
CHAT = TRAIN + " --set posttrain.train_data={tmp}/chat.jsonl --set posttrain.chat_template=bundled:chat/turns.jinja"
SFT, DPO = (CHAT + " --set posttrain.objective=sft",
            CHAT + " --set posttrain.objective=dpo --set train.init_from={base}/run")
CASES = [
    # post-training chat data: every check before the first write
    ("train-sft-no-assistant-turn", SFT, chat_no_assistant, "record 1 has no assistant turn"),
    ("train-sft-unknown-role", SFT, chat_unknown_role, "unknown role 'ghost'"),
    ("train-sft-no-chat-template", SFT.replace(" --set posttrain.chat_template=bundled:chat/turns.jinja", ""),
     chat_sft_records, "no chat template.*set posttrain.chat_template"),
    ("train-dpo-chosen-identical", DPO, chat_identical_pairs, r"chosen identical to rejected \(3 dropped\)"),
    ("train-dpo-no-reference", CHAT + " --set posttrain.objective=dpo", chat_pairs, "needs a reference model"),
    ("train-sft-preference-file", SFT, chat_pairs, "is a preference file"),
    ("train-dpo-sft-file", DPO, chat_sft_records, "is not a preference file"),
    # config values and files
    ("nan-lr", TRAIN + " --set train.lr=.nan", None, "finite"),
    ("inf-lr", TRAIN + " --set train.lr=.inf", None, "finite"),
    ("nan-string", TRAIN + " --set model.norm_eps=nan", None, "finite"),
    ("nan-in-list", TRAIN + " --set 'model.qkv_multipliers=[0.5, .nan]'", None, "finite"),
    ("unknown-key", TRAIN + " --set model.num_layerz=2", None, "num_layers"),
    ("section-not-mapping", TRAIN + " --set train=3", None, "train"),
    ("bad-override", TRAIN + " --set nonsense", None, "KEY=VALUE"),
    ("malformed-yaml", "model-info {tmp}/bad.yaml", bad_yaml, "malformed YAML"),
    ("yaml-list", "model-info {tmp}/bad.yaml", list_yaml, "mapping"),
    ("yaml-non-utf8", "model-info {tmp}/bad.yaml", non_utf8_yaml, "bad.yaml"),
    ("yaml-inherit-loop", "model-info {tmp}/a.yaml", loop_yaml, "loops"),
    ("missing-config", "model-info {tmp}/nope.yaml", None, "not found"),
    ("yaml-duplicate-key", "train {tmp}/bad.yaml", duplicate_key_yaml, "'train' appears twice"),
    ("config-is-a-folder", "model-info {tmp}", None, "is a directory"),
    ("quant-without-lora", "train tiny_uniform --set quant.bits=4 --set quant.group_size=32 "
                           "--set train.out_dir={tmp}/new", None, "lora.enabled"),
    ("bad-mesh", TRAIN + " --set mesh.data=3", None, "mesh"),
    ("seq-len-over-context", TRAIN + " --set train.seq_len=100000", None, "max_context"),
    ("empty-out-dir", "train {base}/tiny.yaml --set train.out_dir=", None, "train.out_dir is empty"),
    ("train-kernel-the-target-lacks", TRAIN + " --set model.attention_impl=cudnn", None, "needs a GPU"),
    ("train-into-init-from", "train {base}/tiny.yaml --set train.init_from={tmp}/lora --set train.out_dir={tmp}/lora",
     copy_lora, "train.out_dir .* is the input"),
    ("no-command", "", None, "required: COMMAND"),
    ("unknown-command", "nonsense", None, "invalid choice"),
    ("missing-required-args", "quantize", None, "--ckpt"),
    ("int-flag-not-int", "quantize --ckpt {base}/run --bits four --out {tmp}/q", None, "--bits"),
    ("zero-batch-size", "eval --ckpt {base}/run --data bundled:corpus/valid/comedy_of_errors.txt --batch-size 0", None,
     "positive integer"),
    ("zero-new-tokens", "generate --ckpt {base}/run --prompt hi --max-new-tokens 0", None, "positive integer"),
    # data: every check before the first write
    ("train-non-utf8-corpus", TRAIN + " " + SRC, non_utf8_corpus, "no readable documents"),
    ("train-empty-corpus", TRAIN + " " + SRC, empty_corpus, "corpus"),
    ("train-bad-jsonl", TRAIN + " " + SRC, bad_jsonl, "corpus"),
    ("train-bad-parquet", TRAIN + " " + SRC, bad_parquet, "corpus"),
    ("train-missing-corpus", TRAIN + " " + SRC, None, "does not exist"),
    ("train-garbage-tokenizer", TRAIN + " --set data.tokenizer={tmp}/run/tokenizer.model", garbage_tokenizer,
     "sentencepiece"),
    ("stats-non-utf8", "data stats {base}/tiny.yaml " + SRC, non_utf8_corpus, "non_utf8 2"),
    ("stats-bad-jsonl", "data stats {base}/tiny.yaml " + SRC, bad_jsonl, "bad_json"),
    ("stats-bad-parquet", "data stats {base}/tiny.yaml " + SRC, bad_parquet, "corpus"),
    ("stats-missing", "data stats {base}/tiny.yaml " + SRC, None, "does not exist"),
    # checkpoints
    ("generate-truncated-step", "generate --ckpt {tmp}/run --prompt hi", truncate_params, "step 2"),
    ("eval-truncated-step", "eval --ckpt {tmp}/run --data bundled:corpus/valid/comedy_of_errors.txt",
     truncate_params, "step 2"),
    ("to-hf-truncated-step", "convert to-hf --ckpt {tmp}/run --out {tmp}/hf_out", truncate_params, "step 2"),
    ("quantize-truncated-step", "quantize --ckpt {tmp}/run --bits 4 --out {tmp}/q", truncate_params, "step 2"),
    ("generate-no-manifest", "generate --ckpt {tmp}/run --prompt hi", delete_manifest, "step 2"),
    ("to-hf-no-manifest", "convert to-hf --ckpt {tmp}/run --out {tmp}/hf_out", delete_manifest, "step 2"),
    ("generate-no-metadata", "generate --ckpt {tmp}/run/checkpoints/2 --prompt hi", delete_metadata, "step 2"),
    ("generate-garbage-config", "generate --ckpt {tmp}/run --prompt hi", garbage_config_yaml, "config.yaml"),
    ("model-info-unknown-key", "model-info --ckpt {tmp}/run", unknown_key_config_yaml, "num_layerz"),
    ("generate-wrong-shapes", "generate --ckpt {tmp}/run --prompt hi", wrong_shape_config_yaml, "different model"),
    ("generate-no-config", "generate --ckpt {tmp}/run --prompt hi", no_config_yaml, "config.yaml"),
    ("generate-garbage-tokenizer", "generate --ckpt {tmp}/run --prompt hi", garbage_tokenizer, "tokenizer.model"),
    ("generate-missing", "generate --ckpt {tmp}/nope --prompt hi", None, "does not exist"),
    ("generate-file", "generate --ckpt {base}/tiny.yaml --prompt hi", None, "not a jaxlm"),
    ("generate-bad-top-p", "generate --ckpt {base}/run --prompt hi --top-p 2", None, "top_p"),
    ("generate-no-prompt", "generate --ckpt {base}/run", None, "--prompt"),
    ("eval-non-utf8", "eval --ckpt {base}/run --data {tmp}/a.txt", non_utf8_text, "UTF-8"),
    ("eval-missing-data", "eval --ckpt {base}/run --data {tmp}/nope.txt", None, "nope.txt"),
    ("eval-data-is-a-folder", "eval --ckpt {base}/run --data {tmp}", None, "is a directory"),
    ("lora-merge-no-adapters", "lora merge --ckpt {base}/run --out {tmp}/m", None, "no LoRA"),
    ("plot-garbage-metrics", "plot {tmp}/run", garbage_metrics, "not JSON"),
    ("plot-missing", "plot {tmp}/nope", None, "metrics.jsonl"),
    ("plot-bad-record", "plot {tmp}/run", bad_metrics_record, "not a metrics record"),
    ("resume-no-step-loads", "train {tmp}/resume.yaml", truncate_every_opt_state, "no checkpoint in .* loads"),
    ("out-under-a-file", "convert to-hf --ckpt {base}/run --out {tmp}/afile/hf", a_file, "is a file"),
    # outputs that are, contain or lie inside an input: refused whatever the flags
    ("to-hf-onto-run", "convert to-hf --ckpt {tmp}/run --out {tmp}/run --overwrite", copy_run, "is the input"),
    ("to-hf-into-run", "convert to-hf --ckpt {tmp}/run --out {tmp}/run/checkpoints --overwrite", copy_run,
     "inside"),
    ("to-hf-step-onto-run", "convert to-hf --ckpt {tmp}/run/checkpoints/2 --out {tmp}/run --overwrite", copy_run,
     "input"),
    ("to-hf-onto-parent", "convert to-hf --ckpt {tmp}/run --out {tmp} --overwrite", copy_run, "contains"),
    ("to-hf-via-symlink", "convert to-hf --ckpt {tmp}/run --out {tmp}/link --overwrite", link_to_run, "input"),
    ("quantize-onto-run", "quantize --ckpt {tmp}/run --bits 4 --out {tmp}/run --overwrite", copy_run, "is the input"),
    ("quantize-onto-parent", "quantize --ckpt {tmp}/run --bits 4 --out {tmp} --overwrite", copy_run, "contains"),
    ("from-hf-onto-hf", "convert from-hf --hf {tmp}/hf --out {tmp}/hf --overwrite", copy_hf, "is the input"),
    ("from-hf-onto-run-inside-hf", "convert from-hf --hf {tmp}/hf --out {tmp}/hf/jx", copy_hf, "inside"),
    ("lora-merge-onto-itself", "lora merge --ckpt {tmp}/lora --out {tmp}/lora --overwrite", copy_lora, "input"),
    ("lora-export-onto-itself", "lora export --ckpt {tmp}/lora --out {tmp}/lora --overwrite", copy_lora, "input"),
    ("plot-onto-run", "plot {tmp}/run --out {tmp}/run", copy_run, "contains"),
    ("tokenizer-onto-run", "tokenizer train bundled:corpus/valid --vocab-size 400 --output {tmp}/run", copy_run,
     "--overwrite"),
    ("to-hf-existing-out", "convert to-hf --ckpt {base}/run --out {tmp}/out", existing_out, "--overwrite"),
    ("quantize-existing-out", "quantize --ckpt {base}/run --bits 4 --out {tmp}/out", existing_out, "--overwrite"),
    ("from-hf-existing-out", "convert from-hf --hf {base}/hf --out {tmp}/out", existing_out, "--overwrite"),
    ("quantize-bad-group", "quantize --ckpt {base}/run --bits 4 --group 48 --out {tmp}/q", None, "group"),
    ("quantize-bad-bits", "quantize --ckpt {base}/run --bits 5 --out {tmp}/q", None, "bits"),
    # Hugging Face folders
    ("hf-truncated-safetensors", "convert from-hf --hf {tmp}/hf --out {tmp}/jx", truncate_safetensors,
     "model.safetensors"),
    ("hf-tiny-safetensors", "convert from-hf --hf {tmp}/hf --out {tmp}/jx", tiny_safetensors, "model.safetensors"),
    ("hf-garbage-safetensors", "convert from-hf --hf {tmp}/hf --out {tmp}/jx", garbage_safetensors,
     "model.safetensors"),
    ("hf-missing-hidden-size", "convert from-hf --hf {tmp}/hf --out {tmp}/jx", hf_missing_hidden_size, "lacks"),
    ("hf-missing-num-layers", "convert from-hf --hf {tmp}/hf --out {tmp}/jx", hf_missing_num_layers, "lacks"),
    ("hf-bad-json", "convert from-hf --hf {tmp}/hf --out {tmp}/jx", hf_bad_json, "not valid JSON"),
    ("hf-json-list", "convert from-hf --hf {tmp}/hf --out {tmp}/jx", hf_json_list, "JSON object"),
    ("hf-unknown-model-type", "convert from-hf --hf {tmp}/hf --out {tmp}/jx", hf_unknown_model_type, "model_type"),
    ("hf-wrong-type-value", "convert from-hf --hf {tmp}/hf --out {tmp}/jx", hf_wrong_type_value, "config.json"),
    ("hf-no-weights", "convert from-hf --hf {tmp}/hf --out {tmp}/jx", hf_no_weights, r"no \*\.safetensors"),
    ("hf-bad-index", "convert from-hf --hf {tmp}/hf --out {tmp}/jx", hf_bad_index, "index"),
    ("hf-index-missing-shard", "convert from-hf --hf {tmp}/hf --out {tmp}/jx", hf_index_missing_shard, "missing"),
    ("hf-pickle-refused", "convert from-hf --hf {tmp}/hf --out {tmp}/jx", hf_pickle_only, "--allow-pickle"),
    ("hf-malicious-pickle", "convert from-hf --hf {tmp}/hf --out {tmp}/jx --allow-pickle", hf_pickle_only,
     "refused: .* not a plain tensor file"),
    ("hf-truncated-pickle", "convert from-hf --hf {tmp}/hf --out {tmp}/jx --allow-pickle", hf_truncated_pickle,
     "not a plain tensor file"),
    ("hf-missing", "convert from-hf --hf {tmp}/nope --out {tmp}/jx", None, "does not exist"),
    ("hf-bad-shard-size", "convert to-hf --ckpt {base}/run --out {tmp}/o --max-shard-size lots", None, "size"),
    # tokenizer training
    ("tokenizer-missing-input", "tokenizer train {tmp}/nope --vocab-size 400 --output {tmp}/tok", None,
     "does not exist"),
    ("tokenizer-non-utf8", "tokenizer train {tmp}/a.txt --vocab-size 400 --output {tmp}/tok", non_utf8_text,
     "UTF-8"),
    ("tokenizer-tiny-vocab", "tokenizer train bundled:corpus/valid --vocab-size 10 --output {tmp}/tok", None,
     "vocab"),
    # config fields, each checked where it enters, from the one description of the field
    ("inherit-a-number", "model-info {tmp}/bad.yaml", inherit_a_number, "`inherit:` in .* must be a config name"),
    ("train-seed-10e23", TRAIN + " --set seed=100000000000000000000000", None,
     r"seed is 100000000000000000000000, must be in \[0, 2\*\*32\)"),
    ("train-b1-over-1", TRAIN + " --set train.b1=1.5", None, r"train.b1 is 1.5, must be in \[0, 1\)"),
    ("train-negative-sample-tokens", TRAIN + " --set train.sample_tokens=-1", None, "train.sample_tokens is -1"),
    ("train-unquoted-prompt", TRAIN + " --set " + shlex.quote("train.sample_prompt=ROMEO: hi"), None,
     """quote it, e.g. --set 'train.sample_prompt="ROMEO: hi"'"""),
    # refused from the shapes before compiling (it was still compiling after 400 s); the default run's seq_len
    ("train-batch-over-host-memory", TRAIN + " --set train.batch_size=300000 --set train.seq_len=128", None,
     r"needs at least .* GiB, more than this host's RAM .* lower train.batch_size"),
    ("train-model-dim-typo", TRAIN + " --set model.model_dim=1000000", None,
     r"needs at least .* GiB, more than this host's RAM .* lower model.model_dim"),
    ("compile-decode-over-context", "compile tiny_uniform --topology v5e:2x2 --decode --prompt-len 500 "
                                    "--new-tokens 100", None, "over the model's context of 512"),
    # data readers and the outputs of data commands
    ("prepare-out-inside-corpus", "data prepare {base}/tiny.yaml " + SRC + " --out {tmp}/corpus/rows", text_corpus,
     "lies inside the input"),
    ("prepare-out-is-corpus", "data prepare {base}/tiny.yaml " + SRC + " --out {tmp}/corpus --overwrite",
     text_corpus, "is the input"),
    ("prepare-out-holds-corpus", "data prepare {base}/tiny.yaml " + SRC + " --out {tmp} --overwrite", text_corpus,
     "contains the input"),
    ("train-parquet-format-over-text", TRAIN + " --set 'data.sources=[{{path: {tmp}/corpus, format: parquet}}]'",
     text_corpus, r"a\.txt is not a Parquet file \(format: parquet\); set data.sources\[\].format"),
    ("stats-jsonl-format-over-text", "data stats {base}/tiny.yaml --set 'data.sources=[{{path: {tmp}/corpus, "
     "format: jsonl}}]'", text_corpus, r"a\.txt is not a JSONL file \(format: jsonl\)"),
    ("train-fails-with-tokenizer-workers", TRAIN + " --set 'data.sources=[{{path: {tmp}/corpus, unit: line}}]' "
     "--set data.workers=2 --set data.on_bad_record=error", bad_line_after_good_ones, "not UTF-8"),
    # models, tokenizers, chat templates, plots and evaluation
    ("from-hf-tokenizer-over-embedding", "convert from-hf --hf {tmp}/hf --out {tmp}/jx", hf_tokenizer_too_big,
     "tokenizer.json has 2248 ids but the embedding has 2048 rows"),
    ("plot-string-loss", "plot {tmp}/run", string_loss_and_earlier_plot, "line 2: 'loss' is 'high', not a number"),
    ("chat-template-does-not-parse", "generate --ckpt {base}/run --chat --chat-template {tmp}/bad.jinja --prompt hi",
     bad_template, r"chat template file .*bad\.jinja does not parse \(line 1"),
    ("chat-template-is-a-folder", "generate --ckpt {base}/run --chat --chat-template {tmp} --prompt hi", None,
     "chat template file .* is a directory"),
    ("to-hf-quantized", "convert to-hf --ckpt {tmp}/q --out {tmp}/hf_out", quantized_model,
     "quantized model .*export the float model it was quantized from"),
    ("eval-tasks-output-unwritable", "eval --ckpt {base}/run --tasks bundled:eval/shakespeare_cloze.yaml --limit 2 "
     "--output /sys/jaxlm-results.json", None, "cannot write /sys/jaxlm-results.json: /sys is not writable"),
    # found by benchmarks/probe_inputs.py
    ("yaml-alias-bomb", "model-info {tmp}/bad.yaml", yaml_alias_bomb, r"model.name must be a string, got \[\['x'"),
    ("train-steps-over-int32", TRAIN + " --set train.steps=100000000000000000000", None,
     r"train.steps is 100000000000000000000, must be in \[1, 2\*\*31\)"),
    ("train-tokenizer-fifo", TRAIN + " --set data.tokenizer={tmp}/fifo", a_fifo, "is not a regular file"),
    ("train-sample-prompt-over-context", TRAIN + " --set train.sample_prompt=" + shlex.quote("ROMEO, speak! " * 200),
     None, r"train.sample_prompt is \d+ tokens.*over the model's context"),
    ("train-compile-cache-a-file", TRAIN + " --set train.compile_cache={base}/tiny.yaml", None,
     "train.compile_cache .* is a file"),
    ("prepare-out-empty", "data prepare {base}/tiny.yaml --out ''", None, "the output path is empty"),
    ("chat-template-range-too-big", "generate --ckpt {base}/run --chat --chat-template {tmp}/t.jinja --prompt hi",
     range_template, r"the chat template failed on this conversation \(OverflowError"),
    ("eval-tasks-output-onto-input", "eval --ckpt {tmp}/run --tasks bundled:eval/shakespeare_cloze.yaml --limit 1 "
     "--output {tmp}/run/config.yaml", copy_run, "lies inside the input"),
    ("to-hf-max-shard-inf", "convert to-hf --ckpt {base}/run --out {tmp}/o --max-shard-size infGB", None,
     "cannot use size 'infGB'"),
    ("from-hf-missing-embedding", "convert from-hf --hf {tmp}/hf --out {tmp}/jx", hf_only_lm_head,
     "tensor.* missing from the checkpoint"),
]


def check_clean(r, before: dict, after: dict, expect: str | None) -> None:
    import re

    lines = r.stderr.splitlines()
    assert r.returncode == 2, f"exit {r.returncode}; stderr:\n{r.stderr[-3000:]}"
    assert "Traceback" not in r.stderr + r.stdout, r.stderr[-3000:]
    assert len(lines) == 1, f"{len(lines)} lines on stderr:\n{r.stderr[-3000:]}"
    if expect:
        assert re.search(expect, lines[0]), lines[0]
    changed = [p for p in before if after.get(p) != before[p]]
    assert not changed, f"pre-existing files changed or lost: {changed[:5]}"
    leftovers = [p for p in after if ".tmp-" in Path(p).name or "orbax-checkpoint-tmp" in p]
    assert not leftovers, f"temporaries left behind: {leftovers[:5]}"


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_changes_nothing(case, base, tmp_path):
    name, template, prep, expect = case
    if prep is not None:
        prep(base, tmp_path)
    args = shlex.split(template.format(base=base, tmp=tmp_path))
    roots = (base, tmp_path)
    before = tree_digest(*roots)
    r = jaxlm(*args, cwd=tmp_path)
    check_clean(r, before, tree_digest(*roots), expect)
    if name.startswith("train-"):  # all checks before the first write
        assert not (tmp_path / "new").exists(), sorted(p.name for p in (tmp_path / "new").iterdir())


# -- a full disk ---------------------------------------------------------------------------------
FULL_DISK = [
    # (id, command, preparation, bytes left free on a 4 MiB tmpfs at TMP/disk, before a one-page earlier.txt)
    ("train", TRAIN.replace("{tmp}/new", "{tmp}/disk/new"), None, None),
    ("to-hf", "convert to-hf --ckpt {base}/run --out {tmp}/disk/hf", None, 64 * 1024),
    ("from-hf", "convert from-hf --hf {base}/hf --out {tmp}/disk/jx", None, 64 * 1024),
    ("quantize-overwrite", "quantize --ckpt {base}/run --bits 4 --out {tmp}/disk/out --overwrite",
     "previous", 64 * 1024),
    ("lora-merge", "lora merge --ckpt {base}/lora --out {tmp}/disk/merged", None, 64 * 1024),
    ("tokenizer", "tokenizer train bundled:corpus/valid --vocab-size 400 --output {tmp}/disk/tok", None, 8192),
    ("plot", "plot {base}/run --out {tmp}/disk/plots", None, 8192),
]


@pytest.mark.parametrize("case", FULL_DISK, ids=[c[0] for c in FULL_DISK])
def test_full_disk_is_one_line_and_keeps_previous_outputs(case, base, tmp_path):
    name, template, prep, free = case
    with contextlib.ExitStack() as stack:
        try:
            disk = stack.enter_context(small_disk(tmp_path / "disk", "4m", free))
        except PermissionError as e:
            pytest.skip(f"full-disk cases need a tmpfs: {e}")
        (disk / "earlier.txt").write_text("an earlier good output")
        if prep == "previous":
            (disk / "out").mkdir()
            (disk / "out" / "config.yaml").write_text("a previous good output")
        roots = (base, tmp_path)
        before = tree_digest(*roots)
        r = jaxlm(*shlex.split(template.format(base=base, tmp=tmp_path)), cwd=tmp_path)
        check_clean(r, before, tree_digest(*roots), "no space left on .*tmpfs")


# -- what a killed process leaves behind (dead-pid cleanup in-process: test_outputs; the resume
# fallback in-process: test_checkpoint; here the real thing) ---------------------------------------
def test_kill_9_during_quantize_leaves_a_temporary_that_the_next_run_removes(base, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from cli_helpers import cli_env

    out = tmp_path / "q"
    cmd = [sys.executable, "-m", "jaxlm.cli.main", "quantize", "--ckpt", str(base / "run"), "--bits", "4",
           "--group", "32", "--out", str(out)]
    for _ in range(3):  # the temporary exists for well under a second: poll for it, then kill
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while proc.poll() is None and not list(tmp_path.glob(".q.tmp-*")):
            time.sleep(0.005)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            break
        shutil.rmtree(out, ignore_errors=True)
    left = list(tmp_path.glob(".q.tmp-*"))
    assert left and not out.exists(), "quantize finished before it could be killed three times"
    r = jaxlm(*cmd[3:], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert not any(p.exists() for p in left) and (out / "config.yaml").is_file()


def test_debug_shows_the_traceback(tmp_path):
    from cli_helpers import cli_env

    r = jaxlm("model-info", tmp_path / "nope.yaml", env=cli_env(JAXLM_DEBUG="1"))
    assert r.returncode == 1 and "Traceback" in r.stderr and "ConfigError" in r.stderr


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None, reason="the probe lines come from libtpu")
@pytest.mark.parametrize("argv", [["train", "default", "--set", "train.steps=1"],
                                  ["generate", "--ckpt", "run", "--prompt", "hi"]])
def test_a_tpu_backend_on_a_host_without_one_is_one_line(argv, tmp_path):
    from cli_helpers import cli_env

    r = jaxlm(*argv, "--set" if argv[0] == "train" else "--max-new-tokens",
              f"train.out_dir={tmp_path}/run" if argv[0] == "train" else "4",
              cwd=tmp_path, env={**cli_env(), "JAX_PLATFORMS": "tpu"})
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr  # libtpu's C++ probe lines are dropped
    assert "could not start its accelerator backend" in r.stderr and "JAX_PLATFORMS" in r.stderr
    assert not (tmp_path / "run").exists()
