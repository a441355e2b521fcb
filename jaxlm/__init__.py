"""jaxlm: small decoder-only language models (OpenELM, Llama 3, Phi-3) in JAX / Flax NNX.

`jaxlm.load(path)` opens a model dir, run dir or checkpoint with its tokenizer for generation
(see jaxlm.inference). Imported lazily so `import jaxlm.errors` stays light.
"""


def __getattr__(name):
    if name == "load":
        # lazy: keeps `import jaxlm` light (inference loads JAX and the model)
        from jaxlm.inference.api import load

        return load
    raise AttributeError(f"module 'jaxlm' has no attribute {name!r}")
