"""Functions defined in code, for ``asyncinvoke worker --app tests.support.code_app:app``.

The tests give a functions file as well, which overrides some keys (retries, where the
records go); tests/unit/test_app.py reads the effective policy of the same app.
"""

from __future__ import annotations

import os
from typing import Any

from asyncinvoke import App, Context

app = App()


@app.function(timeout=10, max_retries=5, backoff={"initial": 0.5})
def shout(event: dict[str, Any], context: Context) -> dict[str, Any]:
    """Says who ran it: the test checks every way of invoking reaches this handler."""
    return {"shout": str(event["text"]).upper(), "pid": os.getpid()}


@app.function(name="always-fails", max_retries=5, timeout=5)
async def always_fails(event: Any, context: Context) -> None:
    raise RuntimeError(f"attempt {context.attempt} fails, as it always does")
