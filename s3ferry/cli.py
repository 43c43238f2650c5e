"""``s3ferry``: one console script, one subcommand per role."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="s3ferry",
        description="Replicate S3 objects where native replication cannot: across AWS "
                    "partitions, from S3-compatible clouds, to several destinations.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("worker", help="consume copy jobs from SQS and copy objects",
                   add_help=False)
    sub.add_parser("backfill", help="diff sources and destinations, enqueue what is missing",
                   add_help=False)
    sub.add_parser("serve", help="the dispatcher as a service: backfills on request (HTTP API)",
                   add_help=False)
    sub.add_parser("events", help="turn S3 event notifications into copy and delete jobs",
                   add_help=False)
    sub.add_parser("status", help="queue depth, messages in flight, dead letters",
                   add_help=False)
    sub.add_parser("demo", help="run the end-to-end demo on local partitions", add_help=False)
    if not argv or argv[0] in {"-h", "--help"}:
        parser.print_help()
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "worker":
        from worker.main import main as worker_main
        return worker_main(rest)
    if command == "backfill":
        from dispatcher.args import backfill_entry  # light: --server starts in milliseconds
        return backfill_entry(rest)
    if command == "serve":
        from dispatcher.intake import serve_main
        return serve_main(rest)
    if command == "events":
        from dispatcher.cli import events_main
        return events_main(rest)
    if command == "status":
        from dispatcher.cli import status_main
        return status_main(rest)
    if command == "demo":
        from s3ferry.demo import main as demo_main
        return demo_main(rest)
    parser.parse_args(argv)  # prints the usage error and exits 2
    return 2
