"""Strict JSON for the commands' ``--json`` output and summary files: no NaN or inf tokens.

``json.dumps`` writes NaN as ``NaN``, which strict JSON readers refuse;
:func:`json_safe` turns non-finite floats into ``null`` and numpy scalars into
Python numbers first. Light on purpose (numpy only): any command can import it.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np


def json_safe(value: Any) -> Any:
    """``value`` with NaN / inf floats as None (strict JSON), numpy scalars as Python numbers, tuples as lists
    and dict keys as strings, recursively."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
