"""Triggers: timers (FC cron) and RabbitMQ sources that invoke functions asynchronously.

definitions  the values (FC's JSON, the functions file, stored records)      pure
cron         expressions → schedules (croniter)                               pure
ticks        which ticks fire now, tick ids, FC's timer event                 pure
events       source messages → CloudEvents 1.0, batch windows                 pure
leader       one scheduler per namespace, elected by the broker               I/O
timers       the scheduler's loop: fire ticks as invocations                  I/O
sources      consume a source queue, invoke per batch, ack after the confirm  I/O
runtime      what a worker runs: the leader candidate, timers and sources     wiring
"""
