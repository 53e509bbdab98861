from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from bisik.crypto._errors import CryptoError


def b64encode(data: bytes) -> str:
    """Unpadded standard base64, the encoding vodozemac uses for keys."""
    return base64.b64encode(data).decode("ascii").rstrip("=")


def b64decode(text: str) -> bytes:
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise CryptoError("invalid base64") from exc


def canonical_json(value: Any) -> bytes:
    """Deterministic JSON bytes for signing: sorted keys, no whitespace, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
