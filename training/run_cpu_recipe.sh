#!/usr/bin/env bash
# The CPU recipe end to end: teacher and student (in parallel, one thread each), then the student
# with distillation from the teacher, evaluation of all three, ONNX export + parity of the student+KD,
# and the shipped default. Run from the repository root after `. ./env.sh`:
#
#   nice -n 10 bash training/run_cpu_recipe.sh data/train data/test runs/cpu
#
# SPLITS (default "cutpaste=000000 bin=000001") names the test scenes evaluated as separate tables;
# ONNX parity runs on the first. The tables get a "GT maps" column: ground-truth maps through the
# same decoding and PnP, the ceiling of the input size (training/evaluate.py --gt-maps).
# Step and wall-time budgets come from the environment (defaults sized for ~1 h 45 min on 2
# otherwise idle cores: teacher 2400 steps at ~1.0 s and student 4000 at ~0.55 s in parallel with
# one thread each, then student + KD with two threads). The cosine lr decays over each budget.
# The student + KD runs exactly as many steps as the student did, so the KD gain is measured at
# equal training.
set -euo pipefail

TRAIN=${1:-data/train}
TEST=${2:-data/test}
OUT=${3:-runs/cpu}
TEACHER_STEPS=${TEACHER_STEPS:-2400}
STUDENT_STEPS=${STUDENT_STEPS:-4000}
MINUTES=${MINUTES:-60}
MAX_FRAMES=${MAX_FRAMES:-0}
EVAL_FRAMES=${EVAL_FRAMES:-0}
mkdir -p "$OUT"
source "$(dirname "$0")/recipe_common.sh"  # steps_of, evaluate_stages

common=(--recipe cpu --train-dir "$TRAIN" --max-frames "$MAX_FRAMES")
start=$(date +%s)
python -m training.train_hrpose --stage teacher "${common[@]}" --max-steps "$TEACHER_STEPS" --threads 1 \
    --max-minutes "$MINUTES" --out "$OUT/teacher" > "$OUT/teacher.log" 2>&1 &
teacher_pid=$!
python -m training.train_hrpose --stage student "${common[@]}" --max-steps "$STUDENT_STEPS" --threads 1 \
    --max-minutes "$MINUTES" --out "$OUT/student" > "$OUT/student.log" 2>&1 &
student_pid=$!
wait "$teacher_pid"
wait "$student_pid"
echo "teacher + student: $(( $(date +%s) - start )) s" | tee "$OUT/times.txt"

steps=$(steps_of "$OUT/student/last.pt")
start=$(date +%s)
python -m training.train_hrpose --stage student_kd "${common[@]}" --threads 2 \
    --max-steps "$steps" --max-minutes "$MINUTES" --teacher "$OUT/teacher/last.pt" --out "$OUT/student_kd" > "$OUT/student_kd.log" 2>&1
echo "student_kd: $(( $(date +%s) - start )) s" | tee -a "$OUT/times.txt"

# One table per scene kind, ONNX parity on the first.
evaluate_stages "$OUT" "$TEST" "$EVAL_FRAMES" --threads 2
python -m training.export_onnx "$OUT/student_kd/last.pt" --out "$OUT/student_kd/hrpose_student_kd.onnx" \
    --parity-split "$parity_split" --parity-frames 20 > "$OUT/parity.json" 2> "$OUT/export.log"
echo "done: $OUT/eval/results.md, $OUT/parity.json"
