"""What the console shows: policy sources, the last hour per minute, values as text."""

from __future__ import annotations

from asyncinvoke.console.history import (
    FAILURES,
    INVOCATIONS,
    MINUTES,
    THROTTLES,
    History,
    Totals,
    read_totals,
)
from asyncinvoke.console.policy_sources import BUILT_IN, DEFAULTS, sources, with_live
from asyncinvoke.console.shown import CHART_HEIGHT, bars, parse_when, value_text, when
from asyncinvoke.contract import pack
from asyncinvoke.metrics import Metrics


def test_each_policy_field_names_the_table_that_set_it() -> None:
    document = {
        "defaults": {"timeout": 5, "backoff": {"initial": 2.0}},
        "functions": {"resize": {"handler": "m:f", "max_retries": 1}, "other": {"url": "u"}},
    }
    found = sources(document, "resize")
    assert found["target"] == "[functions.resize]"
    assert found["max_retries"] == "[functions.resize]"
    assert found["timeout"] == DEFAULTS
    assert found["backoff"] == DEFAULTS
    assert found["concurrency"] == BUILT_IN
    assert sources(document, "other")["max_retries"] == BUILT_IN


def test_fields_live_configuration_sets_name_it_and_its_version() -> None:
    file_sources = {"max_retries": DEFAULTS, "concurrency": BUILT_IN, "timeout": DEFAULTS}
    live_sources = {"max_retries": "api", "concurrency": "functions file"}
    found = with_live(file_sources, live_sources, "api", 7)
    assert found == {
        "max_retries": "live configuration (version 7)",
        "concurrency": BUILT_IN,
        "timeout": DEFAULTS,
    }


def test_the_history_counts_per_minute_from_cumulative_snapshots() -> None:
    totals: Totals = {}
    history = History(lambda: dict(totals))
    start = 60 * 1000
    history.sample(start)
    totals[("f", INVOCATIONS)] = 3
    history.sample(start + 61)  # the next minute
    totals[("f", INVOCATIONS)] = 10
    totals[("f", FAILURES)] = 1
    history.sample(start + 130)  # two minutes on; the same minute sampled twice keeps the last
    totals[("f", INVOCATIONS)] = 12
    history.sample(start + 150)
    counts = history.per_minute("f", INVOCATIONS, start + 150)
    assert len(counts) == MINUTES
    assert counts[-3:] == [0, 3, 9]
    assert sum(counts) == 12
    assert history.per_minute("f", FAILURES, start + 150)[-1] == 1
    assert sum(history.per_minute("g", INVOCATIONS, start + 150)) == 0
    # An hour later, the old minutes are gone from the chart.
    assert sum(history.per_minute("f", INVOCATIONS, start + 150 + 3600)) == 0


def test_the_worker_metrics_give_invocations_failures_and_throttles_per_function() -> None:
    metrics = Metrics()
    metrics.throttles.labels("f").inc(2)
    metrics.failure_records.labels("f", "ThrottleExhausted").inc()
    totals = read_totals(metrics.registry)
    assert (totals[("f", THROTTLES)], totals[("f", FAILURES)]) == (2, 1)
    assert totals.get(("f", INVOCATIONS), 0) == 0


def test_bars_scale_to_the_largest_minute() -> None:
    shown = bars([0, 5, 10], "invocations")
    assert [bar.height for bar in shown] == [0, CHART_HEIGHT // 2, CHART_HEIGHT]
    assert shown[-1].title == "10 invocations, this minute"


def test_values_are_shown_as_text_whatever_their_type() -> None:
    assert value_text(b'{"a": 1}') == '{\n  "a": 1\n}'
    assert value_text(b"plain") == "plain"
    assert value_text(b"\xff\x00") == "(2 bytes, not UTF-8) ff00"
    assert value_text("<img src=x onerror=alert(1)>") == "<img src=x onerror=alert(1)>"
    assert value_text({"k": b"bytes"}).startswith("{")
    assert value_text(pack(1)) != ""


def test_times_are_utc() -> None:
    assert when(None) == "-"
    assert when(0) == "1970-01-01 00:00:00Z"
    assert parse_when("1970-01-01T00:00:01") == 1000
    assert parse_when("not a time") is None
    assert parse_when("") is None


def test_every_template_and_static_file_is_package_data() -> None:
    """A non-editable install has only what pyproject's package-data names."""
    import fnmatch
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["asyncinvoke.console"]
    package = root / "service" / "asyncinvoke" / "console"
    files = [
        path.relative_to(package).as_posix()
        for folder in ("templates", "static")
        for path in (package / folder).iterdir()
    ]
    assert files
    for name in files:
        assert any(fnmatch.fnmatch(name, pattern) for pattern in patterns), name


def _luminance(colour: str) -> float:
    channels = [int(colour[i : i + 2], 16) / 255 for i in (1, 3, 5)]
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def test_the_stylesheets_text_colours_pass_wcag_aa() -> None:
    """Every text colour on every background it is used on: 4.5:1 at least."""
    import re
    from pathlib import Path

    css = (
        Path(__file__).resolve().parents[2]
        / "service/asyncinvoke/console/static/console.css"
    ).read_text()
    colour = dict(re.findall(r"--([a-z]+):\s*(#[0-9a-f]{6})", css))
    pairs = [
        (text, background)
        for text in ("fg", "muted", "link", "bad", "good", "warn")
        for background in ("bg", "band")
    ]
    pairs += [("bg", "bad")]  # the danger buttons' label
    for text, background in pairs:
        lighter, darker = sorted(
            (_luminance(colour[text]), _luminance(colour[background])), reverse=True
        )
        assert (lighter + 0.05) / (darker + 0.05) >= 4.5, (text, background)
