"""Summarise a py-spy raw profile (collapsed stacks), as ``--profile`` of the e2e part writes.

    python -m tests.bench.profile_report FILE [--top 25] [--under FUNC]

Prints the share of samples by package (of the innermost frame), by function
itself (self), and by function including callees (inclusive; each function is
counted once per stack). ``--under`` keeps only stacks that pass through a
function whose name contains FUNC (e.g. ``on_message``) and gives shares of those;
``--thread main`` keeps the main thread's (the event loop's) stacks only.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^():]*)(?::\d+)?\)$")


def parse(path: Path) -> list[tuple[list[str], int]]:
    stacks = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks.append((stack.split(";"), int(count)))
    return stacks


def function(frame: str) -> str:
    match = FRAME.match(frame)
    return f"{match['func']} ({match['file']})" if match else frame


def package(frame: str) -> str:
    match = FRAME.match(frame)
    if not match:
        return frame
    file = match["file"]
    if file.startswith("<"):
        return file
    head = file.split("/")[0]
    return head.removesuffix(".py") if "/" in file else f"{head} (stdlib or top level)"


# Stages of one delivery, most specific first: a stack belongs to the first stage any of
# whose markers occurs in one of its frames (a marker is a substring of "func (file)").
STAGES = (
    ("metrics (prometheus_client)", ("_observe", "prometheus_client/")),
    ("attempt log line (structlog)", ("_log_attempt", "structlog/")),
    ("ack (aio-pika, aiormq)", ("IncomingMessage.ack", "basic_ack", "pipeline.ack")),
    ("envelope decode", ("Pipeline.decode", "contract.py")),
    ("runner: timeout, context, handler", ("PythonRunner.run", "make_context", "handlers.py")),
    ("policy", ("policy.py",)),
    ("our glue: on_message, Pipeline.handle", ("on_message (asyncinvoke", "Pipeline.handle")),
    ("bare consumer callback", ("on_message (bench",)),
    ("delivery -> IncomingMessage (aio-pika)", ("consumer (aio_pika", "aio_pika/tools.py")),
    ("delivery -> Delivery (asyncinvoke consumer)", ("Delivery.__init__", "Consumer._deliver")),
    ("socket write (aiormq writer)", ("Connection.__writer",)),
    ("frame reading, parsing (aiormq, pamqp)", ("Connection.__reader", "FrameReceiver", "pamqp/")),
    ("start-up (imports)", ("importlib", "_find_and_load")),
    ("event loop, other", ("",)),
)


def stage(frames: list[str]) -> str:
    names = [function(frame) for frame in frames]
    for title, markers in STAGES:
        if any(marker in name for marker in markers for name in names):
            return title
    return "other"


def report(stacks: list[tuple[list[str], int]], top: int) -> str:
    total = sum(count for _, count in stacks)
    packages: Counter[str] = Counter()
    stages: Counter[str] = Counter()
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for frames, count in stacks:
        packages[package(frames[-1])] += count
        stages[stage(frames)] += count
        own[function(frames[-1])] += count
        for name in {function(frame) for frame in frames}:
            inclusive[name] += count
    out = [f"{total} samples"]
    for title, counter in (
        ("by stage of a delivery (asyncinvoke worker or bare consumer)", stages),
        ("by package (innermost frame)", packages),
        ("self", own),
        ("inclusive", inclusive),
    ):
        out.append(f"\n-- {title}")
        for name, count in counter.most_common(top):
            out.append(f"{100 * count / total:6.1f}%  {name}")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.profile_report")
    parser.add_argument("file", type=Path)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--under", help="keep stacks through a function whose name has this")
    parser.add_argument(
        "--thread",
        choices=("all", "main", "others"),
        default="all",
        help="main: only stacks of the main thread (rooted in runpy), the event loop's",
    )
    args = parser.parse_args()
    stacks = parse(args.file)
    if args.thread != "all":
        main_thread = args.thread == "main"
        stacks = [
            (frames, count)
            for frames, count in stacks
            if frames[0].startswith("_run_module_as_main") == main_thread
        ]
    if args.under:
        stacks = [
            (frames, count)
            for frames, count in stacks
            if any(args.under in function(frame).split(" (")[0] for frame in frames)
        ]
    print(report(stacks, args.top))


if __name__ == "__main__":
    main()
