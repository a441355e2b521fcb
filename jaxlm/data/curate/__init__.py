"""Data curation as the papers do it: score every document once, write the scores, select second.

    jaxlm data train-classifier --positive bundled:corpus/train --negative bundled:curate/noisy --out q.bin
    jaxlm data curate CONFIG --out DIR                    # score -> DIR/attributes.parquet, curated/, report.md
    jaxlm data curate CONFIG --out DIR --from-attributes  # new thresholds, no rescoring

One module per job: `config` (the data.curate section), `ngrams` (word / char n-gram hashes shared
by near-dedup and decontamination), `attributes` (the model-free per-document scores a worker
computes), `minhash` (signatures through rensa, LSH bands, clusters), `classifier` (fastText),
`decontam` (the eval n-gram index), `perplexity` (the model score, through a scorer the caller
passes in: the data package sits below the model and inference packages), `parts` (the resumable
per-process work units and the corpus fingerprint), `select` (thresholds -> kept documents and
curated shards), `report` (Markdown + PNG histograms) and `run` (the order of it all).
"""
