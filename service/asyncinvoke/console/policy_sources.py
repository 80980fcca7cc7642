"""Where each field of a function's effective policy comes from. Pure.

A field is set by live configuration (the API or ``asyncinvoke function config``, over
the file), by the function's own table, by ``[defaults]``, or not at all (the built-in
default).
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

BUILT_IN = "built-in default"
DEFAULTS = "[defaults]"
LIVE = "live configuration"

# Policy fields (FunctionSpec.policy) and the functions-file key each is read from.
_FIELD_KEYS = {
    "kind": ("handler", "url"),
    "target": ("handler", "url"),
    "timeout": ("timeout",),
    "max_retries": ("max_retries",),
    "max_event_age": ("max_event_age",),
    "concurrency": ("concurrency",),
    "backoff": ("backoff",),
    "task_mode": ("task_mode",),
    "on_success": ("on_success",),
    "on_failure": ("on_failure",),
    "delivery_limit": ("delivery_limit",),
    "throttle_budget": ("throttle_budget",),
}


def sources(document: Mapping[str, Any], function: str) -> dict[str, str]:
    """Policy field → the table that set it, for ``function`` in a parsed functions file."""
    own = _table(_table(document, "functions"), function)
    defaults = _table(document, "defaults")
    found: dict[str, str] = {}
    for policy_field, keys in _FIELD_KEYS.items():
        if any(key in own for key in keys):
            found[policy_field] = f"[functions.{function}]"
        elif any(key in defaults for key in keys):
            found[policy_field] = DEFAULTS
        else:
            found[policy_field] = BUILT_IN
    return found


def with_live(
    file_sources: Mapping[str, str], live_sources: Mapping[str, str], api: str, version: int
) -> dict[str, str]:
    """``file_sources`` with the fields live configuration sets (those ``live_sources``
    says come from ``api``) named as set by it, with the configuration's version."""
    found = dict(file_sources)
    for policy_field, source in live_sources.items():
        if source == api and policy_field in _FIELD_KEYS:
            found[policy_field] = f"{LIVE} (version {version})"
    return found


def read_document(path: Path) -> Mapping[str, Any]:
    """The functions file as parsed at start (it was validated then); empty if unreadable."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _table(document: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = document.get(key)
    return value if isinstance(value, dict) else {}
