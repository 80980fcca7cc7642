"""Metric labels: only the names of configured functions become label values."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from asyncinvoke import contract
from asyncinvoke.metrics import OTHER_FUNCTION, Metrics


def _failure_series(metrics: Metrics) -> dict[tuple[str, str], float]:
    return {
        (sample.labels["function"], sample.labels["condition"]): sample.value
        for family in text_string_to_metric_families(metrics.render().decode())
        for sample in family.samples
        if sample.name == "asyncinvoke_failure_records_total"
    }


def test_a_configured_function_is_its_own_label_value() -> None:
    metrics = Metrics(["resize", "notify"])
    metrics.count_failure_record("resize", contract.INVALID_MESSAGE)
    assert _failure_series(metrics) == {("resize", contract.INVALID_MESSAGE): 1}


def test_names_no_functions_file_configures_share_one_label_value() -> None:
    metrics = Metrics(["resize"])
    for published in ("ghost", "x" * 255, "resize\n", "{\"evil\":1}", ""):
        metrics.count_failure_record(published, contract.UNKNOWN_FUNCTION)
    assert _failure_series(metrics) == {(OTHER_FUNCTION, contract.UNKNOWN_FUNCTION): 5}


def test_the_other_label_value_cannot_be_a_function_name() -> None:
    assert not contract.FUNCTION_RE.fullmatch(OTHER_FUNCTION)
