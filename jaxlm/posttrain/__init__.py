"""Post-training on chat data: supervised fine-tuning (SFT) on conversations and preference tuning (DPO,
SimPO) on chosen / rejected pairs, on the same train step, mesh and checkpoints as pretraining.

    config.py      the `posttrain:` section of a run config (objective, data files, template, beta, ...)
    formats.py     JSONL / Parquet records in the Hugging Face formats, checked and classified
    render.py      a conversation through the chat template -> token ids + assistant-token mask
    rows.py        examples -> (seq_len) rows: SFT packed with segment ids, one preference pair per row
    batches.py     the resumable batch iterator and the validation pass over those rows

The losses (masked cross-entropy, DPO's sigmoid loss, SimPO) are the train step's: jaxlm/training/objectives.py;
the trainer reads the data through jaxlm/training/chat_data.py.
"""
