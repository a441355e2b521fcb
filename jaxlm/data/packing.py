"""Rows of a batch from tokenized documents: packing, or one padded document per row.

Every row holds `seq_len` input positions with
    inputs       token ids
    targets      the next token of the same document (pad id where there is none)
    segment_ids  1, 2, ... per document piece in the row; 0 = padding
    positions    0, 1, ... restarting at every document piece
    loss_mask    1.0 where the target is a real next token of the same document, else 0.0
A document that does not fit the rest of a row continues in the next row as a new piece (positions
restart at 0 there); its last input in the row still gets its true next token as target, so no
transition inside a document is lost and every token is an input exactly once per epoch.
"""

from __future__ import annotations

import numpy as np

FIELDS = ("inputs", "targets", "segment_ids", "positions", "loss_mask")


def empty_row(seq_len: int, pad_id: int) -> dict[str, np.ndarray]:
    return {"inputs": np.full(seq_len, pad_id, np.int32), "targets": np.full(seq_len, pad_id, np.int32),
            "segment_ids": np.zeros(seq_len, np.int32), "positions": np.zeros(seq_len, np.int32),
            "loss_mask": np.zeros(seq_len, np.float32)}


def place(row: dict[str, np.ndarray], at: int, doc: np.ndarray, offset: int, n: int, segment: int) -> None:
    """Write doc[offset:offset+n] into row[at:at+n] as segment `segment`."""
    end = offset + n
    row["inputs"][at:at + n] = doc[offset:end]
    nxt = doc[offset + 1:end + 1]  # one shorter than n when the piece ends the document
    row["targets"][at:at + len(nxt)] = nxt
    row["loss_mask"][at:at + len(nxt)] = 1.0
    row["segment_ids"][at:at + n] = segment
    row["positions"][at:at + n] = np.arange(n, dtype=np.int32)


def padded_row(doc: np.ndarray, seq_len: int, pad_id: int) -> tuple[dict[str, np.ndarray], int]:
    """OpenELM mode: one document per row, truncated or padded. Returns (row, tokens never used as input)."""
    row = empty_row(seq_len, pad_id)
    n = min(len(doc), seq_len)
    place(row, 0, doc, 0, n, 1)
    return row, len(doc) - n
