"""Clean shutdown of 2-process training, N times in a row (issue 7: 20 consecutive runs).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/dist_shutdown.py --runs 20 --out benchmarks/results/dist_shutdown.json

Each run is tests/_dist_worker.py training the tiny model for two steps (case dapo_batch) in
two CPU processes (gloo), launched alternately with ``torch.distributed.run`` and with
``accelerate launch --config_file recipes/accelerate/cpu_2proc.yaml``. A run is clean when it
exits 0 within the timeout and its stderr has none of tests/_launch.py's BAD_EXIT markers
(C++ aborts, tracebacks, gloo errors, a process group left undestroyed).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from _launch import BAD_EXIT, LaunchTimeout, accelerate_launch, run, torchrun  # noqa: E402

from rlreason.tiny import TinySpec, ensure  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--timeout", type=int, default=300)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    model = ensure(TinySpec(), log=lambda *a: None)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.runs):
            name = ("torchrun", "accelerate")[i % 2]
            # built per run: accelerate's static rendezvous gets a fresh free port each time
            launcher = torchrun(2) if name == "torchrun" else accelerate_launch(
                ROOT / "recipes" / "accelerate" / "cpu_2proc.yaml")
            cmd = [*launcher, "train", "--model", str(model), "--out", f"{tmp}/{i}.pt", "--cases", "dapo_batch"]
            t0 = time.perf_counter()
            try:
                res = run(cmd, timeout=args.timeout)
                rc, err = res.returncode, res.stderr
            except LaunchTimeout as e:
                rc, err = None, str(e)
            bad = [s for s in BAD_EXIT if s in err]
            clean = rc == 0 and not bad and Path(f"{tmp}/{i}.pt").exists()
            rows.append({"run": i + 1, "launcher": name, "rc": rc, "bad_markers": bad, "clean": clean,
                         "wall_s": round(time.perf_counter() - t0, 1)})
            print(json.dumps(rows[-1]), flush=True)
            if not clean:
                print(err[-3000:], file=sys.stderr)
    summary = {"runs": len(rows), "clean": sum(r["clean"] for r in rows), "rows": rows}
    print(f"clean exits: {summary['clean']}/{summary['runs']}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=2) + "\n")
    sys.exit(0 if summary["clean"] == summary["runs"] else 1)


if __name__ == "__main__":
    main()
