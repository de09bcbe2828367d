"""Small helpers shared by the CLI and run configs."""
from __future__ import annotations

from typing import Any


def parse_value(s: str) -> Any:
    """Parse a CLI option value: int, float, bool, none, else the string itself."""
    low = s.strip().lower()
    if low in ("none", "null"):
        return None
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    for cast in (int, float):
        try:
            return cast(s)
        except ValueError:
            pass
    return s
