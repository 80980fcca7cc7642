"""One error tree: every error asyncinvoke defines derives from AsyncInvokeError, and the
errors that moved to errors.py are still the same classes at their old addresses."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import asyncinvoke
from asyncinvoke import errors

# Defined outside errors.py in modules that are being restructured; each becomes an
# import of the errors.py class (see errors.py) and leaves this set.
NOT_YET_FROM_ERRORS = {
    "asyncinvoke.destinations.HttpDeliveryError",
    "asyncinvoke.dlq.records.NotReplayable",
}


def _defined_exceptions() -> dict[str, type[BaseException]]:
    found = {}
    for module_info in pkgutil.walk_packages(asyncinvoke.__path__, "asyncinvoke."):
        if module_info.name.endswith("__main__"):
            continue
        module = importlib.import_module(module_info.name)
        for name, value in vars(module).items():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__ == module.__name__
            ):
                found[f"{module.__name__}.{name}"] = value
    return found


def test_every_error_asyncinvoke_defines_derives_from_asyncinvokeerror() -> None:
    defined = _defined_exceptions()
    assert "asyncinvoke.gateway.fcapi.FcError" in defined  # the walk reaches subpackages
    stray = {
        name
        for name, cls in defined.items()
        if not issubclass(cls, errors.AsyncInvokeError) and name not in NOT_YET_FROM_ERRORS
    }
    assert stray == set()


def test_outside_errors_py_only_the_gateway_answers_are_defined() -> None:
    elsewhere = {
        name
        for name in _defined_exceptions()
        if not name.startswith(("asyncinvoke.errors.", "asyncinvoke.gateway.fcapi."))
    }
    assert elsewhere == NOT_YET_FROM_ERRORS


@pytest.mark.parametrize(
    ("old_address", "name"),
    [
        ("asyncinvoke.client", "UnknownFunctionError"),
        ("asyncinvoke.client", "FunctionError"),
        ("asyncinvoke.client", "CallTimeout"),
        ("asyncinvoke.client", "TaskExistsError"),
        ("asyncinvoke.client", "InvokeManyError"),
        ("asyncinvoke.tasks.store", "TaskExists"),
        ("asyncinvoke.tasks.store", "TaskNotFound"),
        ("asyncinvoke.tasks.store", "TaskFinished"),
        ("asyncinvoke.dlq.errors", "DlqError"),
        ("asyncinvoke.dlq.errors", "RecordNotFound"),
        ("asyncinvoke.dlq", "Busy"),
        ("asyncinvoke", "FunctionError"),
        ("asyncinvoke", "CallTimeout"),
    ],
)
def test_a_moved_error_is_the_same_class_at_its_old_address(old_address: str, name: str) -> None:
    assert getattr(importlib.import_module(old_address), name) is getattr(errors, name)


def test_task_exists_is_one_condition_under_two_names() -> None:
    assert errors.TaskExistsError is errors.TaskExists
    from_store = errors.TaskExists("once")
    from_client = errors.TaskExists("once", "Running")
    assert str(from_store) == "task 'once' already exists: a task id is used once"
    assert "(Running)" in str(from_client) and "leave --id out" in str(from_client)
    assert (from_store.task_id, from_client.status) == ("once", "Running")
