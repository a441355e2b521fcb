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
    row["positions"][at:at + n] = _arange(n)


def packed_row(pieces: list[tuple[np.ndarray, int, int]], seq_len: int, pad_id: int) -> dict[str, np.ndarray]:
    """A row of (doc, offset, n) pieces placed end to end as segments 1, 2, ... (what `place` does piece
    by piece, in a few array operations per row: rows of many short documents are common)."""
    row, pad = empty_row(seq_len, pad_id), np.full(1, pad_id, np.int32)
    if not pieces:
        return row
    inputs, targets, doc_ends, at = [], [], [], 0
    for doc, offset, n in pieces:
        inputs.append(doc[offset:offset + n])
        nxt = doc[offset + 1:offset + n + 1]  # one shorter than n when the piece ends the document
        targets.append(nxt)
        at += n
        if len(nxt) < n:
            targets.append(pad)
            doc_ends.append(at - 1)
    lengths = np.fromiter((n for _, _, n in pieces), np.int32, len(pieces))
    row["inputs"][:at] = np.concatenate(inputs)
    row["targets"][:at] = np.concatenate(targets)
    row["segment_ids"][:at] = np.repeat(_arange(len(pieces) + 1)[1:], lengths)
    row["positions"][:at] = _arange(at) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    row["loss_mask"][:at] = 1.0
    row["loss_mask"][doc_ends] = 0.0
    return row


_ARANGE = np.arange(4096, dtype=np.int32)


def _arange(n: int) -> np.ndarray:
    """0 .. n-1 as int32, sliced from a cached array (placing a short document is mostly this call)."""
    global _ARANGE
    if n > len(_ARANGE):
        _ARANGE = np.arange(max(n, 2 * len(_ARANGE)), dtype=np.int32)
    return _ARANGE[:n]


def padded_row(doc: np.ndarray, seq_len: int, pad_id: int) -> tuple[dict[str, np.ndarray], int]:
    """OpenELM mode: one document per row, truncated or padded. Returns (row, tokens never used as input)."""
    row = empty_row(seq_len, pad_id)
    n = min(len(doc), seq_len)
    place(row, 0, doc, 0, n, 1)
    return row, len(doc) - n
