"""Settings from the environment, flags over them, and URLs with their password hidden."""

from __future__ import annotations

import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from asyncinvoke import ladder
from asyncinvoke.errors import ConfigError
from asyncinvoke.settings import Settings, from_env, loop_factory, redact_url


def test_an_empty_environment_gives_the_documented_defaults() -> None:
    settings = from_env({})
    assert settings == Settings()
    assert settings.amqp_url == "amqp://guest:guest@127.0.0.1:5672/"
    assert settings.namespace == "asyncinvoke"
    assert settings.config_path == "functions.toml"
    assert settings.task_store == "sqlite:///./asyncinvoke-tasks.db"
    assert settings.log_format == "json"
    assert settings.max_payload_bytes == 256 * 1024
    assert settings.max_delay_s == 3600
    assert settings.task_store_retry_s == 30.0


def test_logs_are_for_people_on_a_terminal() -> None:
    assert from_env({}, tty=True).log_format == "console"


def test_an_explicit_log_format_wins_over_the_terminal() -> None:
    assert from_env({"ASYNCINVOKE_LOG_FORMAT": "json"}, tty=True).log_format == "json"


def test_every_variable_is_read() -> None:
    settings = from_env(
        {
            "ASYNCINVOKE_AMQP_URL": "amqps://u:p@broker.example:5671/prod",
            "ASYNCINVOKE_NAMESPACE": "billing.v2",
            "ASYNCINVOKE_CONFIG": "/etc/asyncinvoke/functions.toml",
            "ASYNCINVOKE_TASK_STORE": "postgresql://db/tasks",
            "ASYNCINVOKE_LOG_FORMAT": "console",
            "ASYNCINVOKE_MAX_PAYLOAD_BYTES": "1048576",
            "ASYNCINVOKE_MAX_DELAY": "131071",
            "ASYNCINVOKE_SHUTDOWN_GRACE": "2.5",
            "ASYNCINVOKE_TASK_RETENTION": "3600",
            "ASYNCINVOKE_TASK_RESULT_MAX_BYTES": "0",
            "ASYNCINVOKE_TASK_STORE_RETRY": "5",
            "ASYNCINVOKE_EVENT_LOOP": "uvloop",
            "ASYNCINVOKE_BROKER_CONSUMER_TIMEOUT": "7200",
            "ASYNCINVOKE_FAST_CONSUME": "0",
        }
    )
    assert settings == Settings(
        amqp_url="amqps://u:p@broker.example:5671/prod",
        namespace="billing.v2",
        config_path="/etc/asyncinvoke/functions.toml",
        task_store="postgresql://db/tasks",
        log_format="console",
        max_payload_bytes=1048576,
        max_delay_s=131071,
        shutdown_grace_s=2.5,
        task_retention_s=3600.0,
        task_result_max_bytes=0,
        task_store_retry_s=5.0,
        event_loop="uvloop",
        broker_consumer_timeout_s=7200.0,
        fast_consume=False,
    )


def test_an_empty_variable_keeps_the_default() -> None:
    env = {
        name: ""
        for name in (
            "ASYNCINVOKE_AMQP_URL",
            "ASYNCINVOKE_NAMESPACE",
            "ASYNCINVOKE_MAX_PAYLOAD_BYTES",
            "ASYNCINVOKE_MAX_DELAY",
            "ASYNCINVOKE_SHUTDOWN_GRACE",
            "ASYNCINVOKE_TASK_RETENTION",
            "ASYNCINVOKE_TASK_RESULT_MAX_BYTES",
            "ASYNCINVOKE_BROKER_CONSUMER_TIMEOUT",
            "ASYNCINVOKE_TASK_STORE_RETRY",
        )
    }
    assert from_env(env) == Settings()


def test_the_broker_consumer_timeout_defaults_to_rabbitmqs_own_30_minutes() -> None:
    assert from_env({}).broker_consumer_timeout_s == 1_800_000 / 1000


@pytest.mark.parametrize("raw", ["0", "-1", "half an hour", "inf"])
def test_a_broker_consumer_timeout_that_is_no_length_of_time_is_refused(raw: str) -> None:
    with pytest.raises(ConfigError, match="ASYNCINVOKE_BROKER_CONSUMER_TIMEOUT"):
        from_env({"ASYNCINVOKE_BROKER_CONSUMER_TIMEOUT": raw})


def test_without_a_mapping_the_process_environment_is_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ASYNCINVOKE_NAMESPACE", "from_process")
    assert from_env().namespace == "from_process"


def test_the_longest_delay_is_what_the_ladder_reaches() -> None:
    reach = str(ladder.MAX_DELAY_S)
    assert from_env({"ASYNCINVOKE_MAX_DELAY": reach}).max_delay_s == ladder.MAX_DELAY_S
    with pytest.raises(ConfigError, match=reach):
        from_env({"ASYNCINVOKE_MAX_DELAY": str(ladder.MAX_DELAY_S + 1)})


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("ASYNCINVOKE_MAX_PAYLOAD_BYTES", "lots"),
        ("ASYNCINVOKE_MAX_PAYLOAD_BYTES", "0"),
        ("ASYNCINVOKE_MAX_PAYLOAD_BYTES", str(64 * 1024 * 1024 + 1)),
        ("ASYNCINVOKE_MAX_PAYLOAD_BYTES", "1.5"),
        ("ASYNCINVOKE_MAX_DELAY", "-1"),
        ("ASYNCINVOKE_MAX_DELAY", "1h"),
        ("ASYNCINVOKE_SHUTDOWN_GRACE", "soon"),
        ("ASYNCINVOKE_SHUTDOWN_GRACE", "-1"),
        ("ASYNCINVOKE_TASK_RETENTION", "a week"),
        ("ASYNCINVOKE_TASK_RETENTION", "-5"),
        ("ASYNCINVOKE_TASK_RESULT_MAX_BYTES", "-1"),
        ("ASYNCINVOKE_TASK_RESULT_MAX_BYTES", str(64 * 1024 * 1024 + 1)),
        ("ASYNCINVOKE_TASK_STORE_RETRY", "a minute"),
        ("ASYNCINVOKE_TASK_STORE_RETRY", "-1"),
        ("ASYNCINVOKE_NAMESPACE", "has space"),
        ("ASYNCINVOKE_NAMESPACE", "9starts_with_a_digit"),
        ("ASYNCINVOKE_NAMESPACE", "slash/name"),
        ("ASYNCINVOKE_NAMESPACE", "n" * 65),
        ("ASYNCINVOKE_LOG_FORMAT", "xml"),
        ("ASYNCINVOKE_EVENT_LOOP", "trio"),
        ("ASYNCINVOKE_FAST_CONSUME", "maybe"),
        pytest.param(
            "ASYNCINVOKE_SHUTDOWN_GRACE",
            "nan",
        ),
        pytest.param(
            "ASYNCINVOKE_TASK_RETENTION",
            "nan",
        ),
        pytest.param(
            "ASYNCINVOKE_NAMESPACE",
            "asyncinvoke\n",
        ),
    ],
)
def test_a_bad_value_names_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        from_env({name: value})
    assert name in str(info.value)


def test_flags_override_only_what_was_given() -> None:
    base = from_env({"ASYNCINVOKE_NAMESPACE": "env_ns"})
    changed = base.with_overrides(namespace=None, config_path="flag.toml")
    assert changed.namespace == "env_ns"
    assert changed.config_path == "flag.toml"


def test_no_flags_leave_the_settings_as_they_are() -> None:
    base = from_env({})
    assert base.with_overrides(namespace=None, config_path=None) is base


# -- passwords never show -----------------------------------------------------------------

PASSWORDS = st.text(
    alphabet=st.sampled_from(
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=:%@"
    ),
    min_size=1,
    max_size=40,
)


@given(password=PASSWORDS)
def test_redact_url_replaces_the_password_and_keeps_the_rest(password: str) -> None:
    url = f"amqps://svc-user:{password}@broker.example:5671/vhost?heartbeat=30"
    assert redact_url(url) == "amqps://svc-user:***@broker.example:5671/vhost?heartbeat=30"


def test_redact_url_hides_the_default_password() -> None:
    redacted = redact_url("amqp://guest:guest@127.0.0.1:5672/")
    assert redacted == "amqp://guest:***@127.0.0.1:5672/"


def test_redact_url_hides_an_empty_password() -> None:
    assert redact_url("amqp://user:@host/") == "amqp://user:***@host/"


@pytest.mark.parametrize(
    "url", ["amqp://127.0.0.1:5672/", "amqp://user@host/vh", "sqlite:///./tasks.db"]
)
def test_a_url_without_a_password_is_left_alone(url: str) -> None:
    assert redact_url(url) == url


def test_redact_url_keeps_an_ipv6_host_in_brackets() -> None:
    assert redact_url("amqp://u:secret@[::1]:5672/") == "amqp://u:***@[::1]:5672/"


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_redact_url_hides_a_token_given_as_an_http_user(scheme: str) -> None:
    url = f"{scheme}://ghp_T0KEN@hooks.example/notify"
    assert redact_url(url) == f"{scheme}://***@hooks.example/notify"


def test_redact_url_hides_a_password_that_holds_an_at_sign() -> None:
    assert redact_url("amqp://u:p@ss@host:5672/") == "amqp://u:***@host:5672/"


def test_redact_url_takes_a_port_that_is_not_a_number() -> None:
    assert redact_url("http://u:secret@host:http/") == "http://u:***@host:http/"


def test_the_delivery_fast_path_is_on_unless_switched_off() -> None:
    assert from_env({}).fast_consume is True
    assert from_env({"ASYNCINVOKE_FAST_CONSUME": "1"}).fast_consume is True
    assert from_env({"ASYNCINVOKE_FAST_CONSUME": "off"}).fast_consume is False


def test_asyncio_is_the_default_event_loop_and_uvloop_is_opt_in() -> None:
    assert from_env({}).event_loop == "asyncio"
    assert loop_factory("asyncio") is None
    assert from_env({"ASYNCINVOKE_EVENT_LOOP": "uvloop"}).event_loop == "uvloop"
    factory = loop_factory("uvloop")
    assert factory is not None
    loop = factory()
    try:
        assert type(loop).__module__.startswith("uvloop")
    finally:
        loop.close()


def test_uvloop_chosen_but_missing_says_which_extra_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # what an absent package raises
    with pytest.raises(ConfigError, match=r"asyncinvoke\[uvloop\]"):
        loop_factory("uvloop")
