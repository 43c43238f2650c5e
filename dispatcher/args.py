"""``s3ferry backfill``'s command line, shared by the in-process backfill
(:mod:`dispatcher.cli`) and ``--server`` (:mod:`dispatcher.submit`)."""

from __future__ import annotations

import argparse
from typing import Any

from dispatcher.diff import Mode


def common_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML file with endpoints and routes (S3FERRY_CONFIG)")
    parser.add_argument("--queue-url", help="job queue URL (S3FERRY_QUEUE_URL)")


def backfill_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="s3ferry backfill",
        description="List each route's source and destinations, diff them as two sorted "
                    "streams and enqueue copy jobs for what is missing or differs (and delete "
                    "jobs with --delete). Safe to re-run; runs whether or not the queue is "
                    "empty. Prints a JSON summary on stdout.")
    common_options(parser)
    parser.add_argument("--route", action="append", dest="routes", metavar="NAME",
                        help="only this route (repeatable; default: every route)")
    parser.add_argument("--compare", choices=[m.value for m in Mode], default=Mode.SIZE.value,
                        help="size: equal sizes count as copied (fast); checksum: equal sizes "
                             "are checked by full-object checksum or the worker's fingerprint "
                             "(one HEAD per side); content: the workers read equal-sized "
                             "destinations back and copy again those whose bytes differ; "
                             "always: copy everything (default: size)")
    parser.add_argument("--delete", action="store_true",
                        help="also delete destination objects absent from the source (only "
                             "below the destination prefix and inside the route's globs)")
    parser.add_argument("--dry-run", action="store_true",
                        help="enqueue nothing; print counts, bytes and a sample")
    parser.add_argument("--shards", type=int, default=1, metavar="N",
                        help="list first-level directories in parallel, N at a time")
    parser.add_argument("--sample", type=int, default=10, metavar="N",
                        help="jobs shown in the summary (default 10)")
    parser.add_argument("--progress-seconds", type=float, default=5.0,
                        help="interval of progress reports (default 5)")
    remote = parser.add_argument_group(
        "running in a dispatcher service (s3ferry serve)",
        "The service's own config and queue are used; --config and --queue-url are ignored. "
        "The token is read from S3FERRY_INTAKE_TOKEN, never from the command line.")
    remote.add_argument("--server", metavar="URL",
                        help="send the backfill to this s3ferry serve (e.g. "
                             "http://dispatcher:9410) and print its summary")
    remote.add_argument("--no-wait", action="store_true",
                        help="with --server: print the accepted request's id and return")
    return parser


def backfill_request(args: argparse.Namespace) -> dict[str, Any]:
    """The intake API's request body for these arguments."""
    return {"routes": args.routes, "compare": args.compare, "delete": args.delete,
            "dry_run": args.dry_run, "shards": args.shards, "sample": args.sample}

