"""One SFT step and one DPO step of jaxlm on a transformers-made tiny Llama, against the same weights in
PyTorch: the first step's loss (taken before the update) and DPO's summed answer log-probs equal those of
TRL's SFTTrainer / DPOTrainer on the same example within 1e-4 (slow), and those of the transformers model
on the ids jaxlm rendered (fast: the same check without TRL's trainers)."""

from __future__ import annotations

import json
import math

import jax
import numpy as np
import pytest
from test_posttrain_render import LLAMA3_GENERATION

from hf_tokenizer_helpers import LLAMA3_SPECIALS, save_fast_tokenizer, tiny_llama, train_bpe

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from jaxlm.checkpoint import load_model  # noqa: E402
from jaxlm.config import from_dict, to_dict  # noqa: E402
from jaxlm.config.run import RunConfig  # noqa: E402
from jaxlm.convert import from_hf  # noqa: E402
from jaxlm.posttrain.render import ChatRenderer  # noqa: E402
from jaxlm.tokenizer import load_tokenizer  # noqa: E402
from jaxlm.training.trainer import train  # noqa: E402

CONVERSATION = [{"role": "system", "content": "Answer in verse."},
                {"role": "user", "content": "Continue this speech by ROMEO: But soft, what light"},
                {"role": "assistant", "content": "It is the east, and Juliet is the sun."}]
PAIR = {"prompt": CONVERSATION[:2], "chosen": CONVERSATION[2:],
        "rejected": [{"role": "assistant", "content": "Out, damned spot! out, I say!"}]}


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("trl")
    backend = train_bpe(LLAMA3_SPECIALS, vocab_size=600, files=1)
    hf = root / "hf"
    tiny_llama(hf, backend.get_vocab_size(), backend.token_to_id(LLAMA3_SPECIALS[0]),
               backend.token_to_id(LLAMA3_SPECIALS[1]))
    save_fast_tokenizer(backend, hf, LLAMA3_SPECIALS[0], LLAMA3_SPECIALS[1], LLAMA3_GENERATION)
    from_hf(hf, root / "jx")
    (root / "sft.jsonl").write_text(json.dumps({"messages": CONVERSATION}) + "\n")
    (root / "dpo.jsonl").write_text(json.dumps(PAIR) + "\n")
    return root


def jaxlm_first_step(root, objective: str, tmp_path) -> dict:
    """The metrics of step 1 (before any update) of a 1-example jaxlm run from the converted weights."""
    model = to_dict(load_model(root / "jx")[0].model)
    cfg = from_dict(RunConfig, {
        "model": {**model, "attention_impl": "xla", "norm_impl": "xla"}, "data": {"tokenizer": str(root / "jx")},
        "train": {"steps": 1, "batch_size": 1, "seq_len": 128 if objective == "sft" else 256,
                  "z_loss": 0.0, "warmup_steps": 0, "log_every": 1,
                  "out_dir": str(tmp_path / objective), "sample_prompt": "", "init_from": str(root / "jx")},
        "mesh": {"data": 1}, "checkpoint": {"async_save": False},
        "posttrain": {"objective": objective, "train_data": str(root / f"{objective}.jsonl"), "beta": 0.1}})
    train(cfg, devices=jax.devices()[:1], quiet=False)
    return json.loads((tmp_path / objective / "metrics.jsonl").read_text().splitlines()[0])


def torch_logps(model, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per-token log-prob of ids[1:] under the transformers model, where mask[1:] is set."""
    with torch.no_grad():
        logits = model(torch.tensor(ids[None], dtype=torch.long)).logits[0, :-1].double()
    logps = torch.log_softmax(logits, -1).gather(-1, torch.tensor(ids[1:, None], dtype=torch.long))[:, 0]
    return logps.numpy()[mask[1:]]


def test_first_steps_equal_transformers_on_the_rendered_ids(dirs, tmp_path):
    model = transformers.AutoModelForCausalLM.from_pretrained(dirs / "hf", dtype=torch.float32).eval()
    renderer = ChatRenderer(load_tokenizer(dirs / "jx"), LLAMA3_GENERATION)
    sft = jaxlm_first_step(dirs, "sft", tmp_path)
    assert abs(sft["loss"] + torch_logps(model, *renderer.encode(CONVERSATION)).mean()) < 1e-4
    dpo = jaxlm_first_step(dirs, "dpo", tmp_path)
    for side in ("chosen", "rejected"):
        want = torch_logps(model, *renderer.encode_pair_side(PAIR["prompt"], PAIR[side])).sum()
        assert abs(dpo[f"logps/{side}"] - want) < 1e-4 * max(1.0, abs(want))
    assert abs(dpo["loss"] - math.log(2)) < 1e-6


@pytest.mark.slow
def test_first_steps_equal_trl_trainers(dirs, tmp_path):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    tok = transformers.AutoTokenizer.from_pretrained(dirs / "hf")
    common = dict(per_device_train_batch_size=1, report_to="none", max_length=None, use_cpu=True, bf16=False,
                  seed=0, save_strategy="no")

    def first_loss(trainer):
        batch = next(iter(trainer.get_train_dataloader()))
        with torch.no_grad():
            return float(trainer.compute_loss(trainer.model, batch))

    model = transformers.AutoModelForCausalLM.from_pretrained(dirs / "hf", dtype=torch.float32)
    sft = SFTTrainer(model=model, processing_class=tok, train_dataset=Dataset.from_list([{"messages": CONVERSATION}]),
                     args=SFTConfig(output_dir=str(tmp_path / "trl_sft"), assistant_only_loss=True, **common))
    assert abs(jaxlm_first_step(dirs, "sft", tmp_path)["loss"] - first_loss(sft)) < 1e-4
    model = transformers.AutoModelForCausalLM.from_pretrained(dirs / "hf", dtype=torch.float32)
    dpo = DPOTrainer(model=model, processing_class=tok, train_dataset=Dataset.from_list([PAIR]),
                     args=DPOConfig(output_dir=str(tmp_path / "trl_dpo"), beta=0.1, **common))
    trl_loss = first_loss(dpo)
    ours = jaxlm_first_step(dirs, "dpo", tmp_path)
    assert abs(ours["loss"] - trl_loss) < 1e-4
    logged = dpo._metrics["train" if dpo.model.training else "eval"]  # TRL's metrics of that forward
    for side in ("chosen", "rejected"):
        assert abs(ours[f"logps/{side}"] - logged[f"logps/{side}"][-1]) < 1e-4
