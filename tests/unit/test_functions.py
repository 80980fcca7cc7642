"""The functions file: parsing with defaults, every refusal naming file, function and key."""

from __future__ import annotations

import importlib
import re
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from asyncinvoke import functions, ladder
from asyncinvoke.errors import ConfigError
from asyncinvoke.functions import DEFAULT_BACKOFF, Backoff, Destination, FunctionSpec

PATH = "conf/functions.toml"

SPEC_EXAMPLE = """
[defaults]
timeout = 60
max_retries = 3
max_event_age = 86400
concurrency = 16
backoff = { initial = 1.0, multiplier = 2.0, max = 300.0, jitter = 0.2 }

[functions.resize]
handler = "media.handlers:resize"
task_mode = true
on_success = "queue:resize.done"
on_failure = "function:alert"

[functions.notify]
url = "http://127.0.0.1:8080/notify"
"""


def parse(text: str) -> functions.FunctionsFile:
    return functions.parse(textwrap.dedent(text), PATH)


def refusal(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse(text)
    return info.value


# -- a valid file -------------------------------------------------------------------------


def test_the_example_of_the_spec_parses() -> None:
    loaded = parse(SPEC_EXAMPLE)
    assert loaded.path == Path(PATH)
    assert set(loaded.functions) == {"resize", "notify"}
    resize = loaded.functions["resize"]
    assert resize.handler == "media.handlers:resize"
    assert resize.url is None
    assert resize.task_mode is True
    assert resize.on_success == Destination("queue", "resize.done")
    assert resize.on_failure == Destination("function", "alert")
    notify = loaded.functions["notify"]
    assert notify.url == "http://127.0.0.1:8080/notify"
    assert notify.handler is None
    assert notify.on_failure is None


def test_a_function_without_settings_gets_the_documented_defaults() -> None:
    spec = parse('[functions.f]\nhandler = "m:f"\n').functions["f"]
    assert spec == FunctionSpec(
        name="f",
        handler="m:f",
        timeout_s=60.0,
        max_retries=3,
        max_event_age_s=86400,
        concurrency=16,
        backoff=Backoff(initial=1.0, multiplier=2.0, max=300.0, jitter=0.2),
        task_mode=False,
        on_success=None,
        on_failure=None,
        delivery_limit=5,
    )


def test_defaults_table_applies_to_every_function_and_a_function_overrides_it() -> None:
    loaded = parse(
        """
        [defaults]
        timeout = 5
        max_retries = 0
        on_failure = "queue:errors"
        backoff = { initial = 3.0, jitter = 0.0 }

        [functions.a]
        handler = "m:a"

        [functions.b]
        handler = "m:b"
        timeout = 7.5
        max_retries = 8
        on_failure = "https://example.com/hook"
        backoff = { max = 10.0 }
        """
    )
    a, b = loaded.functions["a"], loaded.functions["b"]
    assert (a.timeout_s, a.max_retries) == (5.0, 0)
    assert a.on_failure == Destination("queue", "errors")
    assert a.backoff == Backoff(initial=3.0, multiplier=2.0, max=300.0, jitter=0.0)
    assert (b.timeout_s, b.max_retries) == (7.5, 8)
    assert b.on_failure == Destination("http", "https://example.com/hook")
    assert b.backoff == Backoff(initial=3.0, multiplier=2.0, max=10.0, jitter=0.0)


def test_a_timeout_given_as_an_integer_is_read_as_seconds() -> None:
    spec = parse('[functions.f]\nhandler = "m:f"\ntimeout = 2\n').functions["f"]
    assert spec.timeout_s == 2.0
    assert isinstance(spec.timeout_s, float)


@pytest.mark.parametrize(
    ("key", "value", "attribute", "expected"),
    [
        ("max_retries", "0", "max_retries", 0),
        ("max_retries", "8", "max_retries", 8),
        ("max_event_age", "1", "max_event_age_s", 1),
        ("max_event_age", "604800", "max_event_age_s", 604800),
        ("concurrency", "1", "concurrency", 1),
        ("delivery_limit", "1000", "delivery_limit", 1000),
        ("timeout", "0.001", "timeout_s", 0.001),
    ],
)
def test_the_bounds_of_each_range_are_accepted(
    key: str, value: str, attribute: str, expected: float
) -> None:
    spec = parse(f'[functions.f]\nhandler = "m:f"\n{key} = {value}\n').functions["f"]
    assert getattr(spec, attribute) == expected


def test_policy_shows_the_effective_settings() -> None:
    policy = parse(SPEC_EXAMPLE).functions["notify"].policy()
    assert policy["kind"] == "http"
    assert policy["target"] == "http://127.0.0.1:8080/notify"
    assert policy["on_failure"] == "(failure queue)"
    assert policy["backoff"] == {"initial": 1.0, "multiplier": 2.0, "max": 300.0, "jitter": 0.2}


def test_the_executor_is_a_thread_unless_the_file_says_process() -> None:
    parsed = parse("""
        [defaults]
        executor = "process"
        [functions.a]
        handler = "m:f"
        [functions.b]
        handler = "m:f"
        executor = "thread"
    """).functions
    assert (parsed["a"].executor, parsed["b"].executor) == ("process", "thread")
    assert FunctionSpec("c").executor == "thread"


def test_an_async_handler_with_the_process_executor_is_refused_naming_the_key() -> None:
    from asyncinvoke.process_executor import ProcessExecutor

    with pytest.raises(ConfigError, match="function 'a': key 'executor'"):
        ProcessExecutor(FunctionSpec("a", handler="m:f", executor="process"), True)


# -- every refusal names file, function and key ------------------------------------------


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ('handler = "m:f"\ncolour = "red"', "colour"),
        ('handler = "m:f"\nurl = "http://x"', "handler"),
        ("timeout = 5", "handler"),
        ('handler = "no_colon"', "handler"),
        ('handler = "m:f g"', "handler"),
        ("handler = 5", "handler"),
        ('url = "ftp://example.com"', "url"),
        ("url = 5", "url"),
        ('handler = "m:f"\ntimeout = 0', "timeout"),
        ('handler = "m:f"\ntimeout = 86401', "timeout"),
        ('handler = "m:f"\ntimeout = inf', "timeout"),
        ('handler = "m:f"\ntimeout = nan', "timeout"),
        ('handler = "m:f"\ntimeout = "60"', "timeout"),
        ('handler = "m:f"\ntimeout = true', "timeout"),
        ('handler = "m:f"\nmax_retries = 9', "max_retries"),
        ('handler = "m:f"\nmax_retries = -1', "max_retries"),
        ('handler = "m:f"\nmax_retries = 1.5', "max_retries"),
        ('handler = "m:f"\nmax_retries = true', "max_retries"),
        ('handler = "m:f"\nmax_event_age = 0', "max_event_age"),
        ('handler = "m:f"\nmax_event_age = 604801', "max_event_age"),
        ('handler = "m:f"\nconcurrency = 0', "concurrency"),
        ('handler = "m:f"\ndelivery_limit = 1001', "delivery_limit"),
        ('handler = "m:f"\ntask_mode = "yes"', "task_mode"),
        ('handler = "m:f"\non_success = "mailto:ops@example.com"', "on_success"),
        ('handler = "m:f"\non_success = "queue:"', "on_success"),
        ('handler = "m:f"\non_failure = "function:9lives"', "on_failure"),
        ('handler = "m:f"\non_failure = 5', "on_failure"),
        ('handler = "m:f"\nbackoff = 5', "backoff"),
        ('handler = "m:f"\nbackoff = { factor = 2.0 }', "backoff"),
        ('handler = "m:f"\nbackoff = { jitter = 1.5 }', "backoff.jitter"),
        ('handler = "m:f"\nbackoff = { multiplier = 0.5 }', "backoff.multiplier"),
        ('handler = "m:f"\nbackoff = { initial = "x" }', "backoff.initial"),
        ('handler = "m:f"\nexecutor = "fork"', "executor"),
        ('handler = "m:f"\nexecutor = 1', "executor"),
    ],
)
def test_a_bad_function_setting_names_the_file_the_function_and_the_key(
    table: str, key: str
) -> None:
    exc = refusal(f"[functions.resize]\n{table}\n")
    assert (exc.path, exc.function, exc.key) == (PATH, "resize", key)
    message = str(exc)
    assert PATH in message
    assert "'resize'" in message
    assert f"'{key}'" in message


def test_an_unknown_backoff_key_is_named_with_the_known_ones() -> None:
    message = str(refusal('[functions.f]\nhandler = "m:f"\nbackoff = { factor = 2.0 }\n'))
    assert "factor" in message
    assert "multiplier" in message


@pytest.mark.parametrize(
    ("backoff", "sub_key"),
    [("{ jitter = 1.5 }", "jitter"), ('{ initial = "x" }', "initial"), ("{ max = -1.0 }", "max")],
)
def test_a_bad_backoff_value_names_the_backoff_key(backoff: str, sub_key: str) -> None:
    message = str(refusal(f'[functions.f]\nhandler = "m:f"\nbackoff = {backoff}\n'))
    assert re.search(rf"\b{sub_key}\b", message)


def test_a_range_error_says_the_range_and_the_value() -> None:
    message = str(refusal('[functions.f]\nhandler = "m:f"\nmax_retries = 9\n'))
    assert "between 0 and 8" in message
    assert "9" in message


def test_both_handler_and_url_is_refused_saying_exactly_one() -> None:
    message = str(refusal('[functions.f]\nhandler = "m:f"\nurl = "http://x"\n'))
    assert "exactly one" in message


@pytest.mark.parametrize(
    "table",
    [
        'handler = "m:f"',
        "max_retries = 99",
        'url = "http://x"',
        "colour = 1",
    ],
)
def test_a_bad_defaults_table_is_named_as_defaults(table: str) -> None:
    exc = refusal(f'[defaults]\n{table}\n\n[functions.f]\nhandler = "m:f"\n')
    assert exc.path == PATH
    assert exc.function == "[defaults]"
    assert exc.key == table.split(" ")[0]


@pytest.mark.parametrize(
    "name",
    [
        "9lives",
        "has space",
        "dotted.name",
        "a" * 65,
        "",
        pytest.param(
            "trailing\\n",
        ),
    ],
)
def test_a_bad_function_name_names_the_file_and_the_function(name: str) -> None:
    exc = refusal(f'[functions."{name}"]\nhandler = "m:f"\n')
    assert exc.path == PATH
    assert exc.function == name.replace("\\n", "\n")
    assert "bad function name" in str(exc)


def test_a_function_that_is_not_a_table_is_refused() -> None:
    exc = refusal('[functions]\nf = "m:f"\n')
    assert (exc.path, exc.function) == (PATH, "f")


def test_text_that_is_not_toml_names_the_file() -> None:
    exc = refusal("[functions.f\nhandler = ")
    assert exc.path == PATH
    assert PATH in str(exc)
    assert "TOML" in str(exc)


def test_an_unknown_table_is_refused() -> None:
    exc = refusal('[function.f]\nhandler = "m:f"\n')
    assert "function" in str(exc)
    assert exc.path == PATH


@pytest.mark.parametrize("text", ["", "[defaults]\ntimeout = 1\n", "functions = 5\n"])
def test_a_file_without_functions_is_refused(text: str) -> None:
    assert "no functions" in str(refusal(text))


def test_defaults_that_are_not_a_table_are_refused() -> None:
    assert "[defaults]" in str(refusal('defaults = 5\n[functions.f]\nhandler = "m:f"\n'))


# -- destinations -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("queue:resize.done", Destination("queue", "resize.done")),
        ("queue:a:b-c_d", Destination("queue", "a:b-c_d")),
        ("function:alert", Destination("function", "alert")),
        ("http://127.0.0.1:8080/hook", Destination("http", "http://127.0.0.1:8080/hook")),
        ("https://example.com/a?b=c", Destination("http", "https://example.com/a?b=c")),
    ],
)
def test_each_destination_form_parses_and_prints_back(raw: str, expected: Destination) -> None:
    destination = functions.parse_destination(raw)
    assert destination == expected
    assert str(destination) == raw


@pytest.mark.parametrize(
    "raw",
    [
        "resize",
        "queue:",
        "queue:has space",
        "queue:" + "q" * 256,
        "function:",
        "function:9lives",
        "function:dotted.name",
        "topic:x",
        "ftp://example.com",
        "HTTP://example.com",
        "",
        pytest.param(
            "queue:done\n",
        ),
        pytest.param(
            "function:alert\n",
        ),
    ],
)
def test_a_bad_destination_says_the_forms_that_work(raw: str) -> None:
    with pytest.raises(ValueError, match=r"queue:NAME, function:NAME or an http\(s\):// URL"):
        functions.parse_destination(raw)


# -- files and handlers -------------------------------------------------------------------


def test_load_reads_and_validates_a_file(tmp_path: Path) -> None:
    path = tmp_path / "functions.toml"
    path.write_text(SPEC_EXAMPLE)
    loaded = functions.load(path)
    assert loaded.path == path
    assert set(loaded.functions) == {"resize", "notify"}


def test_load_names_the_file_in_errors_of_its_content(tmp_path: Path) -> None:
    path = tmp_path / "functions.toml"
    path.write_text('[functions.f]\nhandler = "m:f"\ntimeout = -1\n')
    with pytest.raises(ConfigError) as info:
        functions.load(path)
    assert info.value.path == str(path)
    assert str(path) in str(info.value)


def test_a_missing_file_is_named_with_the_way_to_fix_it(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError) as info:
        functions.load(path)
    assert str(path) in str(info.value)
    assert "ASYNCINVOKE_CONFIG" in str(info.value)


def test_a_folder_in_place_of_the_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        functions.load(tmp_path)


@pytest.fixture
def importable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh module name in tmp_path; sys.path and sys.modules are put back after."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    name = f"handlers_{uuid.uuid4().hex}"
    yield name
    sys.modules.pop(name, None)


@pytest.fixture
def handler_module(tmp_path: Path, importable: str) -> tuple[str, Path]:
    """A module of handlers beside a functions file."""
    name = importable
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent(
            """
            LIMIT = 5

            def resize(event, context):
                return event

            class Images:
                @staticmethod
                def rotate(event, context):
                    return "rotated"
            """
        )
    )
    return name, tmp_path


def test_load_handler_imports_from_the_folder_of_the_functions_file(
    handler_module: tuple[str, Path],
) -> None:
    name, folder = handler_module
    handler = functions.load_handler(FunctionSpec("f", handler=f"{name}:resize"), folder)
    assert handler({"a": 1}, None) == {"a": 1}


def test_load_handler_follows_a_dotted_attribute_path(handler_module: tuple[str, Path]) -> None:
    name, folder = handler_module
    handler = functions.load_handler(FunctionSpec("f", handler=f"{name}:Images.rotate"), folder)
    assert handler(None, None) == "rotated"


def test_load_handler_imports_a_package_module() -> None:
    handler = functions.load_handler(FunctionSpec("f", handler="tests.support.handlers:echo"))
    module = sys.modules["tests.support.handlers"]
    assert isinstance(module, ModuleType)
    assert handler is module.echo


def test_a_module_that_does_not_exist_is_named_with_function_and_key() -> None:
    spec = FunctionSpec("resize", handler="no_such_module_here:resize")
    with pytest.raises(ConfigError) as info:
        functions.load_handler(spec)
    assert (info.value.function, info.value.key) == ("resize", "handler")
    assert "no_such_module_here" in str(info.value)
    assert "'resize'" in str(info.value)


def test_an_attribute_that_does_not_exist_is_named(handler_module: tuple[str, Path]) -> None:
    name, folder = handler_module
    spec = FunctionSpec("resize", handler=f"{name}:Images.missing")
    with pytest.raises(ConfigError) as info:
        functions.load_handler(spec, folder)
    assert info.value.key == "handler"
    assert "Images.missing" in str(info.value)


def test_a_handler_that_is_not_callable_is_refused(handler_module: tuple[str, Path]) -> None:
    name, folder = handler_module
    spec = FunctionSpec("resize", handler=f"{name}:LIMIT")
    with pytest.raises(ConfigError, match="not callable") as info:
        functions.load_handler(spec, folder)
    assert info.value.key == "handler"


@pytest.mark.parametrize("source", ["def broken(:\n", "raise RuntimeError('no config')\n"])
def test_a_handler_module_that_fails_to_import_is_a_config_error(
    tmp_path: Path, importable: str, source: str
) -> None:
    name = importable
    (tmp_path / f"{name}.py").write_text(source)
    with pytest.raises(ConfigError) as info:
        functions.load_handler(FunctionSpec("resize", handler=f"{name}:f"), tmp_path)
    assert info.value.key == "handler"


def test_the_folder_of_the_functions_file_comes_last_on_sys_path(
    handler_module: tuple[str, Path],
) -> None:
    name, folder = handler_module
    functions.load_handler(FunctionSpec("f", handler=f"{name}:resize"), folder)
    assert sys.path[-1] == str(folder)
    assert sys.path.count(str(folder)) == 1


def test_a_module_beside_the_functions_file_does_not_shadow_an_installed_one(
    tmp_path: Path, handler_module: tuple[str, Path]
) -> None:
    name, folder = handler_module
    victim = f"victim_{uuid.uuid4().hex}"
    installed = tmp_path / "site-packages"
    installed.mkdir()
    (installed / f"{victim}.py").write_text("ORIGIN = 'installed'\n")
    (folder / f"{victim}.py").write_text("ORIGIN = 'planted in the config folder'\n")
    sys.path.append(str(installed))
    try:
        functions.load_handler(FunctionSpec("f", handler=f"{name}:resize"), folder)
        imported = importlib.import_module(victim)
        assert imported.ORIGIN == "installed"
    finally:
        sys.modules.pop(victim, None)


def test_a_handler_module_shadowed_by_an_installed_one_is_refused_naming_both(
    tmp_path: Path, importable: str
) -> None:
    name = importable
    installed, folder = tmp_path / "site-packages", tmp_path / "conf"
    installed.mkdir()
    folder.mkdir()
    (installed / f"{name}.py").write_text("def resize(event, context):\n    return 'other code'\n")
    (folder / f"{name}.py").write_text("def resize(event, context):\n    return event\n")
    sys.path.append(str(installed))
    with pytest.raises(ConfigError) as info:
        functions.load_handler(FunctionSpec("resize", handler=f"{name}:resize"), folder)
    assert (info.value.function, info.value.key) == ("resize", "handler")
    message = str(info.value)
    assert str(installed / f"{name}.py") in message and str(folder / f"{name}.py") in message


def test_a_handler_package_beside_the_functions_file_is_imported_from_there(
    tmp_path: Path, importable: str
) -> None:
    name = importable
    (tmp_path / name).mkdir()
    (tmp_path / name / "__init__.py").write_text("")
    (tmp_path / name / "jobs.py").write_text("def run(event, context):\n    return 'ran'\n")
    handler = functions.load_handler(FunctionSpec("f", handler=f"{name}.jobs:run"), tmp_path)
    assert handler(None, None) == "ran"
    sys.modules.pop(f"{name}.jobs", None)


def test_the_default_backoff_is_the_documented_one() -> None:
    assert Backoff(initial=1.0, multiplier=2.0, max=300.0, jitter=0.2) == DEFAULT_BACKOFF


# -- the broker's consumer_timeout ---------------------------------------------------------


def test_a_timeout_that_fits_the_brokers_consumer_timeout_with_the_hold_is_accepted() -> None:
    hold_s = ladder.HOLD_LIMIT_MS / 1000
    fits = [
        FunctionSpec("a", handler="m:f", timeout_s=1800 - hold_s),
        FunctionSpec("b", url="http://x", timeout_s=1),
    ]
    functions.check_consumer_timeout(fits, 1800.0, PATH)  # no error


def test_a_timeout_past_the_brokers_consumer_timeout_is_refused_naming_both_and_the_fix() -> None:
    specs = [
        FunctionSpec("short", handler="m:f", timeout_s=60),
        FunctionSpec("transcode", handler="m:f", timeout_s=1799.5),
    ]
    with pytest.raises(ConfigError) as info:
        functions.check_consumer_timeout(specs, 1800.0, PATH)
    error = info.value
    assert (error.path, error.function, error.key) == (PATH, "transcode", "timeout")
    message = str(error)
    assert "timeout of 1799.5 s" in message
    assert "consumer_timeout of 1800 s" in message
    assert "rabbitmq.conf to at least 1801000 (milliseconds)" in message
    assert "ASYNCINVOKE_BROKER_CONSUMER_TIMEOUT=1801" in message
    assert "timeout to 1798.95 s or less" in message


# -- services (FC 2.0's grouping) --------------------------------------------------------


def test_a_function_is_in_the_default_service_unless_defaults_or_it_name_another() -> None:
    plain = parse('[functions.a]\nhandler = "m:f"\n').functions["a"]
    assert plain.service == "default"
    loaded = parse(
        '[defaults]\nservice = "shop"\n'
        '[functions.a]\nhandler = "m:f"\n'
        '[functions.b]\nhandler = "m:f"\nservice = "mail"\n'
        '[functions.c]\nhandler = "m:f"\n'
    )
    assert {name: spec.service for name, spec in loaded.functions.items()} == {
        "a": "shop", "b": "mail", "c": "shop",
    }
    assert loaded.services() == {"mail": ["b"], "shop": ["a", "c"]}
    assert loaded.functions["b"].policy()["service"] == "mail"


@pytest.mark.parametrize("value", ['"a.b"', '""', '"9lives"', "3", '"' + "s" * 129 + '"'])
def test_a_bad_service_name_names_the_key(value: str) -> None:
    exc = refusal(f'[functions.resize]\nhandler = "m:f"\nservice = {value}\n')
    assert (exc.function, exc.key) == ("resize", "service")
