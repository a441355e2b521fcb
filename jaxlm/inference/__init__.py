"""Text generation and scoring: compiled prefill + decode with a KV cache, sampling, a notebook API.

    lm = jaxlm.inference.load("runs/default")      # or jaxlm.load(...)
    lm.generate("To be, or not to be", max_new_tokens=40, temperature=0.8, top_p=0.9, seed=0)
    for piece in lm.stream("Friends, Romans,"): print(piece, end="")
    lm.logprobs("To be"), lm.score("To be"), lm.perplexity(path="valid.txt")
"""

from jaxlm.inference.api import LanguageModel, load
from jaxlm.inference.engine import Engine, GenerationOutput
from jaxlm.inference.sampling import SamplingParams
from jaxlm.inference.scoring import Scorer

__all__ = ["Engine", "GenerationOutput", "LanguageModel", "SamplingParams", "Scorer", "load"]
