#!/usr/bin/env bash
# The crop estimator's CPU recipe end to end (about 5 h on 2 otherwise idle cores), from the
# repository root after `. ./env.sh`:
#
#   hrpose-make-data --kind cutpaste,bin,views --n 3000 --out data/ctrain --seed 7100 --no-depth
#   hrpose-make-data --kind cutpaste,bin --n 3000 --out data/ctrain2 --seed 7200 --no-depth
#   hrpose-make-data --kind cutpaste,bin --n 100 --out data/val --seed 2000 --no-depth
#   hrpose-make-data --kind cutpaste,bin --n 200 --out data/test --seed 1000
#   nice bash training/run_crops_recipe.sh data/ctrain,data/ctrain2 data/val data/test runs/crops
#
# Checkpoints are chosen on the validation split; the test split is read only by the final evaluation.
#
# 1. detector (Lite0, 320x240) and teacher (Lite2 keypoints on 128x128 crops) in parallel, one
#    thread each (two threads each on two cores made OpenMP threads wait on each other);
# 2. student (Lite0) and student + KD (Eq. 7, lambda_1 0.5, lambda_2 5e-5) in parallel for the same
#    number of steps, so the KD gain is measured at equal training;
# 3. the crops file of detector + student + KD, and the evaluation: detector recall/AP, ADD(-S)
#    with detector boxes and with ground-truth boxes, per scene kind, against the HRPose file.
# Budgets come from the environment (minutes; steps for the students), and KEYPOINTS (box|surface).
set -euo pipefail

TRAIN=${1:-data/ctrain,data/ctrain2}
VAL=${2:-data/val}
TEST=${3:-data/test}
OUT=${4:-runs/crops}
KEYPOINTS=${KEYPOINTS:-surface}  # the shipped file's; box = HRPose's corners
DETECTOR_MINUTES=${DETECTOR_MINUTES:-90}
TEACHER_MINUTES=${TEACHER_MINUTES:-90}
STUDENT_STEPS=${STUDENT_STEPS:-5000}
FIRST=${TRAIN%%,*}
mkdir -p "$OUT"
export OMP_WAIT_POLICY=PASSIVE

start=$(date +%s)
python -m training.train_detector --train "$FIRST" --val "$VAL" --out "$OUT/detector" \
    --minutes "$DETECTOR_MINUTES" --threads 1 > "$OUT/detector.log" 2>&1 &
detector_pid=$!
python -m training.train_crops --train "$TRAIN" --val "$VAL" --out "$OUT/teacher" --variant lite2 --keypoints "$KEYPOINTS" \
    --minutes "$TEACHER_MINUTES" --threads 1 > "$OUT/teacher.log" 2>&1 &
teacher_pid=$!
wait "$detector_pid" "$teacher_pid"
echo "detector + teacher: $(( $(date +%s) - start )) s" | tee "$OUT/times.txt"

start=$(date +%s)
python -m training.train_crops --train "$TRAIN" --val "$VAL" --out "$OUT/student" --variant lite0 --keypoints "$KEYPOINTS" \
    --steps "$STUDENT_STEPS" --threads 1 > "$OUT/student.log" 2>&1 &
student_pid=$!
python -m training.train_crops --train "$TRAIN" --val "$VAL" --out "$OUT/student_kd" --variant lite0 --keypoints "$KEYPOINTS" \
    --steps "$STUDENT_STEPS" --threads 1 --teacher "$OUT/teacher/keypoints.pt" > "$OUT/student_kd.log" 2>&1 &
kd_pid=$!
wait "$student_pid" "$kd_pid"
echo "student + student_kd: $(( $(date +%s) - start )) s" | tee -a "$OUT/times.txt"

python -m training.bundle_crops --detector "$OUT/detector/detector.pt" \
    --keypoints "$OUT/student_kd/keypoints.pt" --out "$OUT/crops_lite0_kd.pt"
python -m training.bundle_crops --detector "$OUT/detector/detector.pt" \
    --keypoints "$OUT/student/keypoints.pt" --out "$OUT/crops_lite0.pt"
python -m training.evaluate_detector --detector "$OUT/detector/detector.pt" --split "$TEST" \
    --out "$OUT/eval_detector" > "$OUT/eval_detector.log"
mkdir -p "$OUT/splits/cutpaste" "$OUT/splits/bin"
ln -sfn "$(realpath "$TEST/000000")" "$OUT/splits/cutpaste/000000"
ln -sfn "$(realpath "$TEST/000001")" "$OUT/splits/bin/000001"
python -m training.evaluate --split cutpaste="$OUT/splits/cutpaste" --split bin="$OUT/splits/bin" \
    --model Crops="$OUT/crops_lite0.pt" --model Crops+KD="$OUT/crops_lite0_kd.pt" \
    --model HRPose=hrpose_ros/assets/weights/hrpose_student_kd.pt --gt-boxes \
    --baseline Crops --distilled Crops+KD --threads 2 --out "$OUT/eval" > "$OUT/eval.log"
echo "done: $OUT/eval/results.md, $OUT/eval_detector"
