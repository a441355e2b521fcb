"""Model code that `jaxlm convert to-hf` writes beside the weights, for `trust_remote_code=True`.

The files here are shipped as data: transformers imports them from the export folder, jaxlm never
imports them (they need transformers). Each carries `CODE_VERSION`, which the export also records in
config.json (`jaxlm_code_version`), so a folder says which version of this code it was written with.
"""

from __future__ import annotations

import re
from pathlib import Path

HERE = Path(__file__).parent
_VERSION = re.compile(r'^CODE_VERSION = "([^"]+)"$', re.M)


def code_version(name: str) -> str:
    """The CODE_VERSION string of one of the files here (read from its text, not imported)."""
    match = _VERSION.search((HERE / name).read_text())
    if match is None:  # a file here without a version is a packaging bug
        raise AssertionError(f"{name} has no CODE_VERSION line")
    return match.group(1)


def code_path(name: str) -> Path:
    return HERE / name
