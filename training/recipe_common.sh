# Sourced by run_cpu_recipe.sh and run_paper_recipe.sh: what both do with their three stages.

# steps_of CHECKPOINT: print the training steps stored in a checkpoint (the student + KD runs as
# many as the student did, so the KD gain is measured at equal training).
steps_of() { python -c "from hrpose_ros.checkpoints import load_checkpoint as l; print(l('$1').history['steps'])"; }

#
# evaluate_stages OUT TEST EVAL_FRAMES [evaluate flags...]: evaluate OUT/{teacher,student,student_kd}/last.pt
# with the ground-truth-maps ceiling of the student + KD, one table per scene kind of TEST (SPLITS,
# default "cutpaste=000000 bin=000001": `hrpose-make-data --kind cutpaste,bin` writes scene 000000
# (cut-and-paste) and 000001 (bin); each becomes a split folder OUT/splits/NAME holding a symlink to
# its scene). Writes OUT/eval/ and OUT/eval.log; sets parity_split to the first split folder.
evaluate_stages() {
    local out=$1 test=$2 frames=$3 pair name scene
    shift 3
    local split_args=()
    parity_split=
    for pair in ${SPLITS:-cutpaste=000000 bin=000001}; do
        name=${pair%%=*}; scene=${pair#*=}
        mkdir -p "$out/splits/$name"
        ln -sfn "$(realpath "$test/$scene")" "$out/splits/$name/$scene"
        split_args+=(--split "$name=$out/splits/$name")
        parity_split=${parity_split:-$out/splits/$name}
    done
    python -m training.evaluate "$@" "${split_args[@]}" --max-frames "$frames" \
        --model Teacher="$out/teacher/last.pt" --model HRPose="$out/student/last.pt" \
        --model HRPose+KD="$out/student_kd/last.pt" --gt-maps "$out/student_kd/last.pt" \
        --out "$out/eval" > "$out/eval.log" 2>&1
}
