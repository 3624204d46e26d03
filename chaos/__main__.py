"""`python -m chaos [--duration 600] [--seed N] [--broker apache|tansu] [--no-pg-restart]`: the chaos suite.

Exits 1 if the oracle found any violation, 2 if the harness itself failed.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
from pathlib import Path

from chaos.cluster import default_broker
from chaos.report import RESULTS, print_summary, write_json
from chaos.run import RunConfig, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chaos", description=__doc__)
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load and faults")
    parser.add_argument("--seed", type=int, default=None, help="fault and workload seed (random if unset)")
    parser.add_argument(
        "--no-pg-restart",
        dest="pg_restart",
        action="store_false",
        help="never restart PostgreSQL (it is shared with others)",
    )
    parser.add_argument(
        "--broker",
        choices=["apache", "tansu"],
        default=default_broker(),
        help="a 3-node Apache Kafka cluster (default where Java is present) or the embedded Tansu",
    )
    parser.add_argument("--concurrency", type=int, default=12, help="commands in flight")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the JSON summary goes")
    parser.add_argument("--logs", type=Path, default=None, help="process logs (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the database after the run")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    cfg = RunConfig(
        duration_s=args.duration,
        seed=seed,
        pg_restart=args.pg_restart,
        broker=args.broker,
        concurrency=args.concurrency,
        workdir=args.logs,
        keep=args.keep,
    )
    try:
        result = asyncio.run(run(cfg))
    except KeyboardInterrupt:
        return 2
    except Exception as exc:
        print(f"chaos: the harness failed: {exc!r}", file=sys.stderr)
        return 2
    print_summary(result.summary)
    path = write_json(result.summary, args.results)
    print(f"summary written to {path}")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
