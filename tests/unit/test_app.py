"""Functions defined in code: validated as the functions file is, with its messages, and a
file over them key by key (``functions.combine``), each value's source recorded."""

from __future__ import annotations

import inspect
import textwrap
from pathlib import Path
from typing import Any

import pytest

from asyncinvoke import App, ConfigError, functions
from asyncinvoke.app import code_origin, load_app
from tests.support import code_app

HERE = code_origin(__name__)


def handler(event: Any, context: Any) -> Any:
    return event


async def async_handler(event: Any, context: Any) -> Any:
    return event


def _file_error(key_line: str, tmp_path: Path) -> str:
    path = tmp_path / "functions.toml"
    path.write_text(f'[functions.handler]\nhandler = "m:f"\n{key_line}\n')
    with pytest.raises(ConfigError) as raised:
        functions.load(path)
    return str(raised.value).removeprefix(f"{path}: ")


@pytest.mark.parametrize(
    ("keys", "key_line"),
    [
        ({"max_retries": 9}, "max_retries = 9"),
        ({"timeout": 0}, "timeout = 0"),
        ({"timeout": "soon"}, 'timeout = "soon"'),
        ({"concurrency": 0}, "concurrency = 0"),
        ({"task_mode": "yes"}, 'task_mode = "yes"'),
        ({"on_failure": "nowhere"}, 'on_failure = "nowhere"'),
        ({"backoff": {"jitter": 2}}, "backoff = { jitter = 2 }"),
        ({"backoff": {"speed": 1}}, "backoff = { speed = 1 }"),
        ({"max_event_age": 604801}, "max_event_age = 604801"),
    ],
)
def test_a_bad_value_in_code_gets_the_message_the_file_would_get(
    keys: dict[str, Any], key_line: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as raised:
        App().function(**keys)(handler)
    assert str(raised.value) == f"{HERE}: {_file_error(key_line, tmp_path)}"


def test_an_unknown_keyword_is_refused_naming_the_known_keys(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown key; known keys: backoff, concurrency"):
        App().function(retries=3)(handler)  # type: ignore[call-overload]


def test_a_bad_name_a_nested_function_and_a_second_registration_are_refused() -> None:
    app = App()
    with pytest.raises(ConfigError, match="bad function name; names match"):
        app.function(name="no spaces")(handler)

    def nested(event: Any, context: Any) -> None: ...

    with pytest.raises(ConfigError, match="define it at module level"):
        app.function(nested)
    app.function(handler)
    with pytest.raises(ConfigError, match="'handler': registered twice"):
        app.function(name="handler")(async_handler)
    with pytest.raises(ConfigError, match="takes a function"):
        app.function(print)


def test_the_decorated_function_is_the_function_itself_with_invoke_methods_added() -> None:
    app = App()
    plain = inspect.signature(async_handler)
    registered = app.function(name="echo", timeout=5)(async_handler)
    assert registered is async_handler
    assert inspect.signature(registered) == plain
    assert inspect.iscoroutinefunction(registered)
    assert registered.function_name == "echo"
    assert callable(registered.invoke) and callable(registered.invoke_sync)
    assert app.tables["echo"] == {"handler": f"{__name__}:async_handler", "timeout": 5}


def test_code_alone_is_the_effective_policy_over_the_defaults() -> None:
    loaded = code_app.app.functions_file()
    shout = loaded.functions["shout"]
    assert (shout.handler, shout.timeout_s, shout.max_retries) == (
        "tests.support.code_app:shout", 10.0, 5,
    )
    assert shout.backoff == functions.Backoff(initial=0.5)
    assert loaded.sources["shout"]["max_retries"] == code_origin("tests.support.code_app")
    assert loaded.sources["shout"]["concurrency"] == functions.SOURCE_DEFAULT
    assert loaded.path == Path(code_app.__file__)


def _write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "functions.toml"
    path.write_text(textwrap.dedent(body))
    return path


def test_the_file_overrides_code_key_by_key_and_may_add_functions(tmp_path: Path) -> None:
    path = _write(tmp_path, """
        [defaults]
        timeout = 30          # below the code's 10 s: the code's own value wins
        concurrency = 4       # nobody set it: the file's default applies

        [functions.shout]
        max_retries = 0
        backoff = { multiplier = 3.0 }

        [functions.always-fails]
        url = "http://127.0.0.1:9/fails"

        [functions.extra]
        handler = "tests.support.handlers:echo"
    """)
    loaded = code_app.app.functions_file(path)
    shout = loaded.functions["shout"]
    assert (shout.max_retries, shout.timeout_s, shout.concurrency) == (0, 10.0, 4)
    # backoff is one key: the file's table replaces the code's, the rest from defaults.
    assert shout.backoff == functions.Backoff(multiplier=3.0)
    assert loaded.sources["shout"]["max_retries"] == str(path)
    assert loaded.sources["shout"]["timeout"] == code_origin("tests.support.code_app")
    assert loaded.sources["shout"]["concurrency"] == f"{path} [defaults]"
    # A url in the file replaces the code's handler: what runs is one key.
    fails = loaded.functions["always-fails"]
    assert (fails.handler, fails.url) == (None, "http://127.0.0.1:9/fails")
    assert loaded.sources["always-fails"]["url"] == str(path)
    assert "handler" not in loaded.sources["always-fails"]
    assert loaded.functions["extra"].handler == "tests.support.handlers:echo"
    assert loaded.path == path


def test_a_bad_override_names_the_file_and_a_function_only_in_the_file_needs_a_handler(
    tmp_path: Path,
) -> None:
    path = _write(tmp_path, "[functions.shout]\nmax_retries = 12\n")
    with pytest.raises(ConfigError) as raised:
        code_app.app.functions_file(path)
    assert str(raised.value) == (
        f"{path}: function 'shout': key 'max_retries': must be between 0 and 8, got 12"
    )
    path = _write(tmp_path, "[functions.orphan]\ntimeout = 3\n")
    with pytest.raises(ConfigError, match=r"'orphan'.*needs exactly one of 'handler' or 'url'"):
        code_app.app.functions_file(path)


def test_an_empty_app_without_a_file_has_no_functions() -> None:
    with pytest.raises(ConfigError, match=r"no functions: register one with @app\.function"):
        App().functions_file()


def test_load_app_finds_the_app_and_says_what_is_wrong_otherwise() -> None:
    assert load_app("tests.support.code_app:app") is code_app.app
    with pytest.raises(ConfigError, match=r"use package\.module:attribute"):
        load_app("tests.support.code_app")
    with pytest.raises(ConfigError, match="cannot import module 'no_such_module'"):
        load_app("no_such_module:app")
    with pytest.raises(ConfigError, match=r"is not an asyncinvoke\.App"):
        load_app("tests.support.code_app:shout")
