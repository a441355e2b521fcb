"""lm-evaluation-harness: the `jaxlm` model's loglikelihood equals a direct computation from the
model's logits, and the same requests and tasks give the same numbers as lm-eval's Hugging Face
model (`hf`) on the `to-hf` export (same ids, same weights). Local tasks only: nothing downloads."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from convert_helpers import save_jaxlm_model

lm_eval = pytest.importorskip("lm_eval")
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from lm_eval.api.instance import Instance  # noqa: E402

from jaxlm.cli.main import main  # noqa: E402

TOL = 1e-4  # log-likelihood, float32 (measured: ~4e-6)
TASKS = ["bundled:eval/shakespeare_cloze.yaml", "bundled:eval/shakespeare_lines.yaml"]
SMALL = ["model.num_layers=2", "model.model_dim=64", "model.num_query_heads=4", "model.num_kv_heads=2",
         "model.head_dim=16", "model.ffn_dim=128", "model.attention_impl=xla", "model.norm_impl=xla"]
PAIRS = [("To be, or not to be,", " that is the question"), ("ROMEO: ", "O, she doth teach the torches"),
         ("", "Friends, Romans, countrymen"), ("Now is the winter", " of our discontent"),
         ("A" * 3, " horse! a horse! my kingdom for a horse!")]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(jaxlm LanguageModel, JaxlmLM, lm-eval's HFLM on the export, root); max_length 64 so long
    texts roll over several windows."""
    from lm_eval.models.huggingface import HFLM

    import jaxlm
    from jaxlm.convert import to_hf
    from jaxlm.eval import JaxlmLM

    root = tmp_path_factory.mktemp("lm_eval")
    save_jaxlm_model(root / "jx", "tiny_uniform", SMALL, seed=2)
    to_hf(root / "jx", root / "hf")
    lm = jaxlm.load(root / "jx")
    hf = HFLM(pretrained=str(root / "hf"), device="cpu", dtype="float32", batch_size=4, max_length=64)
    return lm, JaxlmLM(lm=lm, batch_size=4, max_length=64), hf, root


def instances(kind, args):
    return [Instance(kind, {}, a, i) for i, a in enumerate(args)]


def test_loglikelihood_equals_the_model_logits_and_hf(models):
    lm, jx, hf, _ = models
    got = jx.loglikelihood(instances("loglikelihood", PAIRS))
    for (context, continuation), (logp, greedy) in zip(PAIRS, got):
        if context:
            ctx, cont = jx._encode_pair(context, continuation)
        else:
            ctx, cont = [jx.prefix_token_id], jx.tok_encode(continuation, add_special_tokens=False)
        ids = np.array([ctx + cont])
        logits = np.asarray(lm.model(ids[:, :-1]), np.float64)[0, -len(cont):]  # predictions of cont
        top = logits.max(-1, keepdims=True)
        logsm = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
        assert abs(logp - logsm[np.arange(len(cont)), cont].sum()) <= 1e-4
        assert greedy == bool((logits.argmax(-1) == cont).all())
    ref = hf.loglikelihood(instances("loglikelihood", PAIRS), disable_tqdm=True)
    assert max(abs(a[0] - b[0]) for a, b in zip(got, ref)) <= TOL and [a[1] for a in got] == [b[1] for b in ref]
    # The model's own most likely next token, as text, is recognised as greedy.
    prompt = "Friends, Romans,"
    ctx = jx.tok_encode(prompt)
    best = int(np.asarray(lm.model(np.array([ctx])))[0, -1].argmax())
    assert jx.loglikelihood(instances("loglikelihood", [(prompt, lm.continuation_text(ctx, [best]))]))[0][1]


def test_rolling_loglikelihood_and_generation_equal_hf(models):
    from jaxlm.assets import resolve_path

    _, jx, hf, _ = models
    play = resolve_path("bundled:corpus/valid/as_you_like_it.txt").read_text()
    texts = [(play[:900],), (play[5000:5040],)]  # ~250 tokens: four 64-token windows; and one window
    got, ref = jx.loglikelihood_rolling(instances("loglikelihood_rolling", texts)), \
        hf.loglikelihood_rolling(instances("loglikelihood_rolling", texts), disable_tqdm=True)
    # lm-eval's hf sums a long text's log-probs in float32 (measured 1.3e-4 on -3494): relative slack too.
    assert np.allclose(got, ref, atol=TOL, rtol=1e-6), (got, ref)
    short = jx.tok_encode(texts[1][0])
    assert abs(got[1] - float(jx.lm.scorer.token_logprobs([jx.prefix_token_id] + short).sum())) <= 1e-4
    gen = [("To be, or not to be", {"until": ["\n"], "max_gen_toks": 12, "do_sample": False}),
           ("HAMLET:", {"until": [".", ","], "max_gen_toks": 12}), ("O", {"until": ["\n"], "max_gen_toks": 5})]
    assert jx.generate_until(instances("generate_until", gen)) == hf.generate_until(instances("generate_until", gen),
                                                                                   disable_tqdm=True)


def test_jaxlm_eval_tasks_equal_lm_eval_hf_on_the_export(models, capsys):
    from jaxlm.eval.tasks import task_config, task_manager

    _, _, _, root = models
    out = root / "results.json"
    assert main(["eval", "--ckpt", str(root / "jx"), "--tasks", *TASKS, "--limit", "8", "--batch-size", "4",
                 "--output", str(out), "--log-samples"]) == 0
    assert "shakespeare_cloze" in capsys.readouterr().out
    ours = json.loads(out.read_text())
    specs = [task_config(t) for t in TASKS]
    hf_args = f"pretrained={root / 'hf'},device=cpu,dtype=float32"
    theirs = lm_eval.simple_evaluate(model="hf", model_args=hf_args, tasks=specs, limit=8, batch_size=4,
                                     task_manager=task_manager(specs), log_samples=True)
    assert ours["results"]["shakespeare_cloze"]["acc,none"] == theirs["results"]["shakespeare_cloze"]["acc,none"]
    assert ours["results"]["shakespeare_lines"]["exact_match,none"] == \
        theirs["results"]["shakespeare_lines"]["exact_match,none"]
    pairs = [(x, y) for a, b in zip(ours["samples"]["shakespeare_cloze"], theirs["samples"]["shakespeare_cloze"])
             for x, y in zip(a["resps"], b["resps"])]
    assert len(pairs) == 32 and max(abs(x[0][0] - y[0][0]) for x, y in pairs) <= TOL
    assert [s["resps"] for s in ours["samples"]["shakespeare_lines"]] == \
        [s["resps"] for s in theirs["samples"]["shakespeare_lines"]]
    # The registered model, as `lm_eval --model jaxlm` looks it up, gives the same accuracy.
    import jaxlm.eval  # noqa: F401

    again = lm_eval.simple_evaluate(model="jaxlm", model_args=f"path={root / 'jx'},batch_size=4", tasks=specs[:1],
                                    limit=8, task_manager=task_manager(specs))
    assert again["results"]["shakespeare_cloze"]["acc,none"] == theirs["results"]["shakespeare_cloze"]["acc,none"]


@pytest.mark.slow  # lm-eval's command line indexes its ~15,000 task files first (~30 s); the registry lookup
# it makes is covered by the test above
def test_lm_eval_command_line_with_jaxlm_registered(models, tmp_path):
    """`python -m jaxlm.eval` is lm-eval's command line; a local task folder via --include_path."""
    _, _, _, root = models
    from jaxlm.assets import resolve_path

    data = resolve_path("bundled:eval/shakespeare_cloze.jsonl")
    yaml_text = resolve_path("bundled:eval/shakespeare_cloze.yaml").read_text().replace(
        "test: shakespeare_cloze.jsonl", f"test: {data}").replace("task: shakespeare_cloze", "task: local_cloze")
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "local_cloze.yaml").write_text(yaml_text)
    r = subprocess.run([sys.executable, "-m", "jaxlm.eval", "--model", "jaxlm", "--model_args", f"path={root / 'jx'}",
                        "--tasks", "local_cloze", "--include_path", str(tmp_path / "tasks"), "--limit", "4",
                        "--batch_size", "4"], capture_output=True, text=True, timeout=600,
                       env={**os.environ, "JAX_PLATFORMS": "cpu", "HF_DATASETS_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert "local_cloze" in r.stdout and "acc" in r.stdout


def test_bad_task_inputs_are_one_line_errors(models, tmp_path, capsys):
    _, _, _, root = models
    assert main(["eval", "--ckpt", str(root / "jx"), "--tasks", str(tmp_path / "missing.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "bad.yaml").write_text("just: text\n")
    assert main(["eval", "--ckpt", str(root / "jx"), "--tasks", str(tmp_path / "bad.yaml")]) == 2
    assert "has no `task:` name" in capsys.readouterr().err


@pytest.mark.slow  # indexes lm-eval's ~15,000 shipped task files (~30 s)
def test_unknown_task_name_is_a_one_line_error(models, capsys):
    _, _, _, root = models
    assert main(["eval", "--ckpt", str(root / "jx"), "--tasks", "no_such_task_xyz"]) == 2
    assert "unknown lm-eval task(s) no_such_task_xyz" in capsys.readouterr().err


FAKE_EVALUATION = """
import sys

import tqdm
from lm_eval import evaluator

import jaxlm.eval.tasks
from jaxlm.cli.main import main
from jaxlm.errors import JaxlmError


def evaluate(*args, **kwargs):  # what lm-eval writes to stderr: progress bars, log lines, git's complaint
    for _ in tqdm.tqdm(range(3)):
        pass
    print("a log line", file=sys.stderr)
    evaluator.get_git_commit_hash()
    if sys.argv[1] == "fail":
        raise JaxlmError("the task failed")
    return {"results": {}, "versions": {}}


jaxlm.eval.tasks.evaluate = evaluate
sys.exit(main(["eval", "--ckpt", "unused", "--tasks", "t"]))
"""


@pytest.mark.parametrize("outcome", ["fail", "succeed"])
def test_eval_tasks_keep_lm_eval_noise_off_a_failure_and_git_quiet(outcome, tmp_path):
    r = subprocess.run([sys.executable, "-c", FAKE_EVALUATION, outcome], cwd=tmp_path, capture_output=True, text=True,
                       timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})  # tmp_path: not a git repository
    if outcome == "fail":
        assert (r.returncode, r.stderr) == (2, "jaxlm eval: error: the task failed\n")
    else:
        assert r.returncode == 0 and "100%" in r.stderr and "a log line" in r.stderr, r.stderr
        assert "fatal" not in r.stderr
