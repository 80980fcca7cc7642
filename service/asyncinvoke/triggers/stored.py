"""Trigger definitions in the namespace's configuration store (``docstore``), beside the
functions file's: what the FC API and ``asyncinvoke trigger`` create, read, change and
delete.

Stored under kind ``trigger``, name ``{function}:{trigger}``, as ``Trigger.to_record``
(the source URL included: the store is the broker's, as secret as the broker itself).
A stored trigger wins over a file's of the same name, as API values win over the file
for live configuration; deleting it brings the file's back. A trigger only the file
defines cannot be deleted through the API (the file would bring it back at the next
start): disable it with an update, or remove it from the file.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from asyncinvoke.docstore import DocumentStore, Entry
from asyncinvoke.errors import InvalidTrigger, TriggerExists, TriggerNotFound
from asyncinvoke.triggers import definitions
from asyncinvoke.triggers.definitions import Trigger

KIND = "trigger"


def key(function: str, name: str) -> str:
    return f"{function}:{name}"


def from_entry(entry: Entry) -> Trigger:
    """The stored trigger, its times the store's own (created is kept across updates)."""
    trigger = definitions.from_record(entry.document)
    return replace(trigger, created_ms=entry.created_ms, modified_ms=entry.modified_ms)


class TriggerStore:
    def __init__(self, store: DocumentStore, file_triggers: Iterable[Trigger] = ()):
        self.store = store
        self.file = {trigger.key: trigger for trigger in file_triggers}

    def stored(self) -> list[Trigger]:
        return [from_entry(entry) for entry in self.store.list(KIND)]

    def list(self, function: str | None = None, prefix: str = "") -> list[Trigger]:
        """The triggers in force, sorted by function and name."""
        found = dict(self.file)
        found.update((trigger.key, trigger) for trigger in self.stored())
        return [
            trigger
            for _, trigger in sorted(found.items())
            if (function is None or trigger.function == function)
            and trigger.name.startswith(prefix)
        ]

    def get(self, function: str, name: str) -> Trigger:
        entry = self.store.get(KIND, key(function, name))
        if entry is not None:
            return from_entry(entry)
        if (function, name) in self.file:
            return self.file[(function, name)]
        raise TriggerNotFound(function, name)

    async def create(self, function: str, body: Mapping[str, Any], now_ms: int) -> Trigger:
        trigger = definitions.create(function, body, now_ms)
        if (function, trigger.name) in self.file or self.store.get(
            KIND, key(function, trigger.name)
        ):
            raise TriggerExists(function, trigger.name)
        return await self._put(trigger)

    async def update(
        self, function: str, name: str, body: Mapping[str, Any], now_ms: int
    ) -> Trigger:
        changed = definitions.update(self.get(function, name), body, now_ms)
        return await self._put(replace(changed, origin="api"))

    async def delete(self, function: str, name: str) -> Trigger:
        existing = self.get(function, name)
        if existing.origin != "api":
            raise InvalidTrigger(
                f"is defined in {existing.origin}: remove it there, or disable it with an "
                "update (enable: false)",
                field="triggerName",
                trigger=name,
            )
        await self.store.delete(KIND, key(function, name))
        return existing

    async def _put(self, trigger: Trigger) -> Trigger:
        entry = await self.store.put(KIND, key(trigger.function, trigger.name), trigger.to_record())
        return from_entry(entry)
