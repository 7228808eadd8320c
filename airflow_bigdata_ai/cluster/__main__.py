"""``python -m airflow_bigdata_ai.cluster serve --state-dir DIR --cluster-id ID`` (the service process)."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m airflow_bigdata_ai.cluster")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the shared cluster service in the foreground")
    serve.add_argument("--state-dir", required=True)
    serve.add_argument("--cluster-id", default="manual")
    args = parser.parse_args(argv)
    from airflow_bigdata_ai.cluster.service import serve as run

    return run(args.state_dir, args.cluster_id)


if __name__ == "__main__":
    sys.exit(main())
