"""Run chains of `moeprune` commands in one interpreter: the study's worker process.

    python -m flows.study_runner CHAINS.json STATUS.json

CHAINS.json is a list of `{"id": ..., "commands": [[subcommand, flag, value, ...], ...]}`; each command
is exactly the argument list of `moeprune` (so `moeprune <args>` in a shell does the same). Importing
torch and transformers costs several CPU seconds per process: running a whole shard of the study in one
process pays it once. A failed command skips the rest of its chain (the next chain still runs); the
exit status is 1 when any command failed. STATUS.json is rewritten after every chain:
`{"chains": [{"id", "ok", "commands": [{args, code, wall_seconds, cpu_seconds}]}], "process_cpu_seconds"}`
(CPU seconds of this process, all its threads, imports included).

This is a subprocess of `flows/study.py`; the flow itself never imports torch.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any


def run_command(app: Any, args: list[str]) -> dict[str, Any]:
    """One `moeprune` command in this process; its exit code and timings (never raises)."""
    wall, cpu = time.perf_counter(), time.process_time()
    error = ""
    try:
        app(args=args, prog_name="moeprune")
        code = 0
    except SystemExit as exit_:  # click ends every command with sys.exit, 0 included
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    except Exception:  # a bug in a stage: record it, go on with the next chain
        code, error = 1, traceback.format_exc(limit=8)
    record = {
        "args": args,
        "code": code,
        "wall_seconds": round(time.perf_counter() - wall, 3),
        "cpu_seconds": round(time.process_time() - cpu, 3),
    }
    if error:
        record["error"] = error
    return record


def run_chain(app: Any, chain: dict[str, Any]) -> dict[str, Any]:
    """The commands of one chain in order, stopping at the first failure."""
    results = []
    for args in chain["commands"]:
        print(f"[study] {chain['id']}: moeprune {' '.join(args)}", file=sys.stderr, flush=True)
        results.append(run_command(app, [str(arg) for arg in args]))
        if results[-1]["code"] != 0:
            break
    ok = len(results) == len(chain["commands"]) and all(r["code"] == 0 for r in results)
    return {"id": chain["id"], "ok": ok, "commands": results}


def main(argv: list[str]) -> int:
    """Run every chain of the chains file; write the status file; 0 when all succeeded."""
    if len(argv) != 2:
        print("usage: python -m flows.study_runner CHAINS.json STATUS.json", file=sys.stderr)
        return 2
    chains_file, status_file = Path(argv[0]), Path(argv[1])
    from moeprune.cli import app  # sets the offline defaults before any heavy import

    chains = json.loads(chains_file.read_text())
    statuses = []
    for chain in chains:
        statuses.append(run_chain(app, chain))
        status = {"chains": statuses, "process_cpu_seconds": round(time.process_time(), 3)}
        status_file.write_text(json.dumps(status, indent=2) + "\n")
    return 0 if all(status["ok"] for status in statuses) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
