"""Checked by mypy in ``make lint``, never run: ``@app.function`` keeps the function's
signature for type checkers and adds ``invoke`` / ``invoke_sync``. The ``type: ignore``
lines must be needed (``--warn-unused-ignores``): were the signature lost to ``Any``,
they would be unused, and mypy would fail."""

from __future__ import annotations

from typing import assert_type

from asyncinvoke import App, Context

app = App()


@app.function(max_retries=1, timeout=30)
def resize(event: dict[str, int], context: Context) -> str:
    return str(event)


@app.function
async def notify(event: str, context: Context) -> int:
    return len(event)


async def uses(context: Context) -> None:
    assert_type(resize({"width": 1}, context), str)
    assert_type(await notify("hello", context), int)
    resize("not a dict", context)  # type: ignore[arg-type]
    notify(1, context)  # type: ignore[arg-type, unused-coroutine]
    assert_type(await resize.invoke({"width": 1}, delay=2.5, id="r-1"), str)
    assert_type(notify.invoke_sync("hello", task=True), str)
    resize.invoke_sync({"width": 1}, delay="soon")  # type: ignore[arg-type]
    app.function(max_retries="3")  # type: ignore[call-overload]
