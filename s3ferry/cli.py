"""``s3ferry``: one console script, one subcommand per role."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

COMMANDS = {
    "worker": "consume copy jobs from SQS and copy objects",
    "backfill": "diff sources and destinations, enqueue what is missing",
    "serve": "the dispatcher as a service: backfills on request (HTTP API)",
    "events": "turn S3 event notifications into copy and delete jobs",
    "status": "queue depth, messages in flight, dead letters",
    "demo": "run the end-to-end demo on local partitions",
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in COMMANDS:
        # each role imports only its own modules: `backfill --server` needs no botocore
        return entry(argv[0])(argv[1:])
    parser = top_parser()
    if not argv or argv[0] in {"-h", "--help"}:
        parser.print_help()
        return 0 if argv else 2
    parser.parse_args(argv)  # prints the usage error and exits 2
    return 2


def entry(command: str) -> Callable[[list[str]], int]:
    if command == "worker":
        from worker.main import main as worker_main
        return worker_main
    if command == "backfill":
        return backfill_main
    if command == "serve":
        from dispatcher.intake import serve_main
        return serve_main
    if command == "events":
        from dispatcher.cli import events_main
        return events_main
    if command == "status":
        from dispatcher.cli import status_main
        return status_main
    from s3ferry.demo import main as demo_main
    return demo_main


def backfill_main(argv: Sequence[str]) -> int:
    """``s3ferry backfill``: asked of a running ``s3ferry serve`` with ``--server``, otherwise
    listed and diffed in this process."""
    from dispatcher.args import backfill_parser

    parser = backfill_parser()
    args = parser.parse_args(argv)
    if args.no_wait and not args.server:
        parser.error("--no-wait goes with --server")
    if args.server:
        from dispatcher.submit import submit_backfill
        return submit_backfill(args)
    from dispatcher.cli import backfill_local
    return backfill_local(args)


def top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="s3ferry",
        description="Replicate S3 objects where native replication cannot: across AWS "
                    "partitions, from S3-compatible clouds, to several destinations.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, text in COMMANDS.items():
        sub.add_parser(name, help=text, add_help=False)
    return parser
