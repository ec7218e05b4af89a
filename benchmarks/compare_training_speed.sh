#!/bin/bash
# The demo recipe's training path in two source trees (e.g. main and a branch): median seconds per
# optimiser step of every stage, each tree in a fresh workspace on the same prepared demo data, the
# trees alternated round by round, and the ratio B / A per stage. Wall time and peak RSS of each
# training command too (feature pass and frozen-query pass included).
#
#   benchmarks/compare_training_speed.sh TREE_A TREE_B WORK [ROUNDS]
#   e.g.  git archive main | tar -x -C /tmp/tree-main
#         benchmarks/compare_training_speed.sh /tmp/tree-main "$PWD" /tmp/uf-speed 2
set -euo pipefail
A=$(realpath "$1"); B=$(realpath "$2"); WORK=$3; ROUNDS=${4:-2}
export HF_HUB_OFFLINE=1 PYTHONDONTWRITEBYTECODE=1
mkdir -p "$WORK"
[ -d "$WORK/data" ] || PYTHONPATH=$B python -m unifashion_cli.main prepare demo --out "$WORK/data" --num-items 1200 -q
P1="train.retrieval.max_steps=30 train.caption.max_steps=30 train.generate.max_steps=60 train.eval_every=0
    train.save_every=0 train.log_every=1 train.eval_fid_items=0"
P2="train.phase2.max_steps=30 train.eval_every=0 train.save_every=0 train.log_every=1"
for round in $(seq "$ROUNDS"); do
  for side in A B; do
    tree=$A; [ "$side" = B ] && tree=$B
    home=$WORK/$side-$round; rm -rf "$home"
    (cd "$tree" && UNIFASHION_HOME=$home PYTHONPATH=$tree /usr/bin/time -f "$side round $round phase 1: wall %e s, peak RSS %M KiB" \
        python -m unifashion_cli.main train demo --data "$WORK/data" --out "$home/p1" $P1 -q >/dev/null)
    (cd "$tree" && UNIFASHION_HOME=$home PYTHONPATH=$tree /usr/bin/time -f "$side round $round phase 2: wall %e s, peak RSS %M KiB" \
        python -m unifashion_cli.main train demo --phase 2 --checkpoint "$home/p1" --data "$WORK/data" \
        --out "$home/p2" $P2 -q >/dev/null)
  done
done
python - "$WORK" "$ROUNDS" <<'PY'
import json, statistics, sys
from pathlib import Path

work, rounds = Path(sys.argv[1]), int(sys.argv[2])

def seconds(side: str) -> dict[str, float]:
    """Median seconds per step of each stage over every round (each stage's first two steps left out)."""
    times: dict[str, list[float]] = {}
    for r in range(1, rounds + 1):
        for run in ("p1", "p2"):
            rows = [json.loads(line) for line in (work / f"{side}-{r}" / run / "metrics.jsonl").read_text().splitlines()]
            for stage in dict.fromkeys(row["stage"] for row in rows if "seconds_per_step" in row):
                times.setdefault(stage, []).extend(
                    [row["seconds_per_step"] for row in rows if row.get("stage") == stage and "seconds_per_step" in row][2:])
    return {stage: statistics.median(values) for stage, values in times.items()}

a, b = seconds("A"), seconds("B")
print(f"{'stage':<10} {'A s/step':>9} {'B s/step':>9} {'B/A':>6}")
for stage in a:
    print(f"{stage:<10} {a[stage]:9.3f} {b[stage]:9.3f} {b[stage] / a[stage]:6.2f}")
PY
