"""The web console at ``/console`` (served by the gateway and by ``serve``).

- ``app``: the routes and pages (``Console``);
- ``guard``: what every request passes (session, login, CSRF token, headers);
- ``sessions``: the signed session cookie and CSRF tokens;
- ``failure_views``: the failures page and its actions;
- ``task_views``: the tasks pages, Stop and Re-run;
- ``function_state``: a function's state and policy in force, pause and resume (live
  configuration);
- ``management``: unacknowledged counts from RabbitMQ's management API;
- ``failures``: the failure queue through the dead-letter tool, and its summary;
- ``depths``: queue depths and consumers from the broker;
- ``history``: invocations and failures per minute over the last hour;
- ``policy_sources``: where each field of a function's policy comes from;
- ``shown``: values as the pages show them.
"""

from asyncinvoke.console.app import Console
from asyncinvoke.console.guard import PREFIX

__all__ = ["PREFIX", "Console"]
