"""`mnist-nn watch` on large logs: the first poll of a run, then polls after a row is appended.

    python benchmarks/watch_poll.py                    # 50 MB metrics.jsonl + 50 MB batches.jsonl
    python benchmarks/watch_poll.py --megabytes 5 --polls 3

Writes a run directory whose two JSON-lines logs are --megabytes each, serves it with the watch
app, and times `GET /api/runs` over HTTP: the first poll (everything is read), then --polls polls
each after one more row is appended (only the new bytes are read). Reports the medians, the size
of the answer and how much the process's resident memory grew. Writes
benchmarks/results/watch-poll.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path

from common import RESULTS, write_result

from mnist_nn.apps.watch import WatchServer, bind

METRICS_ROW = '{{"epoch": {0}, "train_loss": 0.5, "eval_split": "val", "eval_loss": 0.25, "eval_accuracy": 0.9}}\n'
BATCH_ROW = '{{"epoch": {0}, "batch": 5, "step": {0}, "train_loss": 0.125}}\n'


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def write_log(path: Path, row: str, megabytes: int) -> int:
    lines, size = [], 0
    while size < megabytes * 2**20:
        lines.append(row.format(len(lines) + 1))
        size += len(lines[-1])
    path.write_text("".join(lines))
    return len(lines)


def timed_get(url: str) -> tuple[float, int]:
    start = time.perf_counter()
    with urllib.request.urlopen(url, timeout=600) as answer:
        body = answer.read()
    return time.perf_counter() - start, len(body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--megabytes", type=int, default=50, help="size of each log (default 50)")
    parser.add_argument("--polls", type=int, default=10, help="polls after an appended row (default 10)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder for watch-poll.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "run"
        folder.mkdir()
        config = {"recipe": {"name": "tutorial", "epochs": 10**9, "batch_size": 100}, "data": {"train_size": 1000}}
        (folder / "config.json").write_text(json.dumps(config))
        write_log(folder / "metrics.jsonl", METRICS_ROW, args.megabytes)
        rows = write_log(folder / "batches.jsonl", BATCH_ROW, args.megabytes)
        before = rss_mb()
        server = WatchServer([folder], bind("127.0.0.1", 0)).start()
        try:
            first, first_bytes = timed_get(server.url + "api/runs")
            later = []
            for n in range(args.polls):
                with open(folder / "batches.jsonl", "a") as handle:
                    handle.write(BATCH_ROW.format(rows + n + 1))
                later.append(timed_get(server.url + "api/runs"))
        finally:
            server.stop()
        grown = rss_mb() - before
    result = {
        "megabytes_each": args.megabytes,
        "first_poll_s": round(first, 3),
        "first_answer_bytes": first_bytes,
        "later_poll_median_s": round(statistics.median(t for t, _ in later), 4),
        "later_poll_max_s": round(max(t for t, _ in later), 4),
        "later_answer_bytes": later[-1][1],
        "rss_growth_mb": round(grown, 1),
    }
    print(json.dumps(result, indent=2))
    write_result("watch-poll", result, args.results)


if __name__ == "__main__":
    main()
