#!/usr/bin/env bash
# Run bids_denoise through a real Slurm cluster and check that the derivatives equal those of
# a MultiProc run on this machine (`make test-slurm`).
#
# 1. Starts the single-node test cluster (scripts/ci/start_slurm.sh) unless `sinfo` already
#    answers; a cluster this script started is stopped again at the end.
# 2. MultiProc reference run of the whole bundled example dataset.
# 3. The modes in SLURM_TEST_MODES (default: all three), each into its own output folder:
#      slurm        --use-plugin workflows/plugins/slurm.yml (Nipype SLURM plugin: bids-denoise
#                   submits the nodes with sbatch and polls squeue; it must exit 0)
#      slurm_graph  --use-plugin workflows/plugins/slurm_graph.yml (SLURMGraph: every node is
#                   submitted at once with afterok dependencies and bids-denoise returns; the
#                   script then waits until the jobs have left the queue)
#      array        workflows/slurm/bids_denoise_array.sbatch as a real job array, one task per
#                   participant (RUNTIME=none: the venv's bids-denoise instead of a container),
#                   after its one-off VALIDATE_ONLY=1 step
# 4. For each mode: lists the Slurm jobs it made (ids above a marker job submitted just before;
#    from `scontrol show job`, which keeps finished jobs for MinJobAge, and the slurmd log when
#    readable), fails unless there are at least the expected number and all COMPLETED on the
#    cluster, and compares the derivatives with the MultiProc ones
#    (scripts/ci/compare_derivatives.py: same files, NIfTI within float32 tolerance, JSON equal
#    apart from RunTime/Devices/Device).
#
# Environment:
#   PYTHON                    the interpreter whose bids-denoise runs (default: .venv/bin/python)
#   SLURM_TEST_PARTICIPANTS   participants every mode processes (default "01")
#   SLURM_TEST_ARGS           more selection options for every mode (default "--session-label 1":
#                             with "01", the two runs of sub-01/ses-1); SLURM_TEST_PARTICIPANTS="01 02"
#                             SLURM_TEST_ARGS="" runs the whole example dataset (about 3x longer)
#   SLURM_TEST_MODES          default "slurm slurm_graph array"
#   SLURM_TEST_DIR            work/output folder (default: a new /tmp/bids_denoise_slurm_test_*;
#                             on a multi-node cluster it must be on a shared file system)
#   SLURM_TEST_KEEP=1         keep SLURM_TEST_DIR after a successful run (it is kept after a failure)
#   SLURM_TEST_TIMEOUT        seconds to wait for the jobs of one mode (default 900)
#   KEEP_SLURM=1              leave a cluster that this script started running
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PYTHON=${PYTHON:-$REPO/.venv/bin/python}
PYTHON=$(realpath -s "$PYTHON")
BIDS_DENOISE=$(dirname "$PYTHON")/bids-denoise
PARTICIPANTS=${SLURM_TEST_PARTICIPANTS:-01}
SELECT_ARGS=${SLURM_TEST_ARGS---session-label 1}
MODES=${SLURM_TEST_MODES:-slurm slurm_graph array}
TIMEOUT=${SLURM_TEST_TIMEOUT:-900}
OUT=${SLURM_TEST_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/bids_denoise_slurm_test_XXXXXX")}
mkdir -p "$OUT"
OUT=$(realpath "$OUT")
# Nipype's SLURM plugin names jobs after $LOGNAME, which CI shells may not set.
export LOGNAME=${LOGNAME:-$(id -un)}
export SLURM_CI_DIR=${SLURM_CI_DIR:-/tmp/bids_denoise_slurm}

log() { printf '[test_slurm %(%H:%M:%S)T] %s\n' -1 "$*"; }
fail() { log "FAILED: $*" >&2; exit 1; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

[[ -x $BIDS_DENOISE ]] || fail "$BIDS_DENOISE not found (make venv, or set PYTHON)"
declare -A TIMES=() JOBS=() RESULTS=()
STARTED_CLUSTER=0
SUCCESS=0

cleanup() {
    local status=$?
    if [[ $STARTED_CLUSTER == 1 ]]; then
        mkdir -p "$OUT/slurm-logs"
        cp "$SLURM_CI_DIR"/log/*.log "$OUT/slurm-logs/" 2>/dev/null || true
        if [[ ${KEEP_SLURM:-0} == 1 ]]; then
            log "KEEP_SLURM=1: the test cluster keeps running (scripts/ci/start_slurm.sh stop)"
        else
            bash "$REPO/scripts/ci/start_slurm.sh" stop || true
        fi
    fi
    if [[ $SUCCESS == 1 && ${SLURM_TEST_KEEP:-0} != 1 ]]; then
        rm -rf "$OUT"
    else
        log "outputs, work dirs and logs kept in $OUT"
    fi
    exit "$status"
}
trap cleanup EXIT

# ------------------------------------------------------------------------------- cluster
t0=$(now)
if timeout 10 sinfo -h >/dev/null 2>&1; then
    log "a Slurm cluster answers already; using it"
    TIMES[cluster_start]="0 (already up)"
else
    STARTED_CLUSTER=1
    bash "$REPO/scripts/ci/start_slurm.sh"
    TIMES[cluster_start]=$(elapsed "$t0")
fi
sinfo

DATASET=$("$PYTHON" -c 'from bids_denoise.data import example_dataset; print(example_dataset())')
mapfile -t ALL_SUBJECTS < <(find "$DATASET" -mindepth 1 -maxdepth 1 -type d -name 'sub-*' -printf '%f\n' | sed 's/^sub-//' | sort)
read -r -a SELECTED <<<"$PARTICIPANTS"
read -r -a SELECT <<<"$SELECT_ARGS"
log "dataset $DATASET: subjects ${ALL_SUBJECTS[*]}; every mode processes ${SELECTED[*]} ${SELECT[*]}"

# -------------------------------------------------------------------------- helpers
# Submit a tiny job and print its id: every job of the mode that follows has a larger id.
marker_job() {
    sbatch --parsable -J bids_denoise_ci_marker -o /dev/null -t 1 --wrap true | cut -d';' -f1
}

# The jobs (ids > $1) of this user, as "id name state nodelist exitcode" lines, in $2.
list_jobs() {
    scontrol show job -o 2>/dev/null | "$PYTHON" -c '
import re, sys
after, user = int(sys.argv[1]), sys.argv[2]
for line in sys.stdin:
    fields = dict(re.findall(r"(\w+)=(\S*)", line))
    if "JobId" not in fields or int(fields["JobId"]) <= after:
        continue
    if not fields.get("UserId", "").startswith(user + "("):
        continue
    name = fields.get("JobName", "?")
    if fields.get("ArrayTaskId"):
        name += "[" + fields["ArrayTaskId"] + "]"
    print(fields["JobId"], name, fields.get("JobState"), fields.get("NodeList"), fields.get("ExitCode"))
' "$1" "$(id -un)" | sort -n >"$2"
}

# Wait until no job of this user with an id > $1 is in the queue.
wait_for_jobs() {
    local after=$1 deadline=$((SECONDS + TIMEOUT)) left
    while ((SECONDS < deadline)); do
        left=$(squeue -h -u "$(id -un)" -o %A | awk -v a="$after" '$1 > a' | wc -l)
        ((left == 0)) && return 0
        sleep 2
    done
    squeue -u "$(id -un)" >&2
    squeue -h -u "$(id -un)" -o %A | awk -v a="$after" '$1 > a' | xargs -r scancel
    fail "jobs still queued after ${TIMEOUT}s (cancelled)"
}

# Check the jobs of a mode: at least $3 of them, all COMPLETED with exit code 0.
check_jobs() {
    local mode=$1 after=$2 minimum=$3 file=$OUT/$1/slurm_jobs.txt
    list_jobs "$after" "$file"
    local count bad launched="n/a"
    count=$(wc -l <"$file")
    bad=$(awk '$3 != "COMPLETED" || $5 != "0:0"' "$file")
    if [[ -r $SLURM_CI_DIR/log/slurmd.log ]]; then
        # every job must also appear as launched in the slurmd log of the node
        launched=$(awk '{print $1}' "$file" | while read -r id; do
            grep -q "Launching batch job $id for" "$SLURM_CI_DIR/log/slurmd.log" && echo "$id"
        done | wc -l)
    fi
    log "$mode: $count Slurm jobs (ids $(head -n1 "$file" | cut -d' ' -f1)-$(tail -n1 "$file" | cut -d' ' -f1)), states: $(awk '{print $3}' "$file" | sort | uniq -c | xargs), nodes: $(awk '{print $4}' "$file" | sort -u | xargs), launched per slurmd.log: $launched"
    sed -n '1,5p' "$file" | sed 's/^/    /'
    ((count >= minimum)) || fail "$mode: only $count Slurm jobs, expected at least $minimum"
    [[ -z $bad ]] || fail "$mode: jobs that did not complete:"$'\n'"$bad"
    [[ $launched == n/a || $launched == "$count" ]] || fail "$mode: only $launched of $count jobs appear in slurmd.log"
    JOBS[$mode]=$count
}

compare() {  # $1: mode, $2: reference output folder
    local mode=$1 reference=$2
    log "$mode: comparing with the MultiProc derivatives in ${reference#"$OUT"/}"
    if "$PYTHON" "$REPO/scripts/ci/compare_derivatives.py" "$reference" "$OUT/$mode/out" \
        | tee "$OUT/$mode/compare.txt" | tail -n 20; then
        RESULTS[$mode]=$(tail -n1 "$OUT/$mode/compare.txt")
    else
        fail "$mode: derivatives differ from MultiProc (see above)"
    fi
}

count_runs() { find "$1" -name '*_desc-denoised_dwi.nii.gz' | wc -l; }

# ------------------------------------------------------------------------------ MultiProc
# The reference: the same participants as every Slurm mode (the methods text and the
# dataset description depend on what a run processed).
REFERENCE=$OUT/multiproc/out
log "multiproc: reference run of participants ${SELECTED[*]} ${SELECT[*]}"
t0=$(now)
"$BIDS_DENOISE" "$DATASET" "$REFERENCE" participant --participant-label "${SELECTED[@]}" "${SELECT[@]}" -w "$OUT/multiproc/work" \
    --nprocs 2 --omp-nthreads 1 --skip-bids-validation >"$OUT/multiproc.log" 2>&1 \
    || { tail -n 40 "$OUT/multiproc.log"; fail "the MultiProc run failed"; }
TIMES[multiproc]=$(elapsed "$t0")
log "multiproc: $(count_runs "$REFERENCE") runs in ${TIMES[multiproc]} s"

# ---------------------------------------------------------------------------------- modes
for mode in $MODES; do
    mkdir -p "$OUT/$mode"
    mark=$(marker_job)
    case $mode in
    slurm | slurm_graph)
        plugin=$REPO/workflows/plugins/$mode.yml
        log "$mode: bids-denoise --participant-label ${SELECTED[*]} ${SELECT[*]} --use-plugin ${plugin#"$REPO"/}"
        t0=$(now)
        status=0
        "$BIDS_DENOISE" "$DATASET" "$OUT/$mode/out" participant --participant-label "${SELECTED[@]}" "${SELECT[@]}" \
            -w "$OUT/$mode/work" --omp-nthreads 1 --skip-bids-validation --use-plugin "$plugin" \
            >"$OUT/$mode/app.log" 2>&1 || status=$?
        if [[ $mode == slurm ]]; then
            # the SLURM plugin waits for its jobs: the app's exit status covers the denoising
            [[ $status == 0 ]] || { tail -n 40 "$OUT/$mode/app.log"; fail "$mode: bids-denoise exited with $status"; }
        else
            # SLURMGraph returns once everything is submitted; its summary cannot know the outcome
            log "$mode: bids-denoise returned $status after $(elapsed "$t0") s (submission only); waiting for the jobs"
            grep -q "^[A-Za-z0-9_]*=\$(sbatch " "$OUT/$mode/work/bids_denoise_wf/batch/submit_jobs.sh" \
                || { tail -n 40 "$OUT/$mode/app.log"; fail "$mode: no submit_jobs.sh was written"; }
            wait_for_jobs "$mark"
        fi
        TIMES[$mode]=$(elapsed "$t0")
        nruns=$(count_runs "$OUT/$mode/out")
        if [[ $mode == slurm ]]; then
            minimum=$((3 * nruns))  # at least split, denoise and merge of every run
        else
            # shellcheck disable=SC2016  # a literal "=$(sbatch " in submit_jobs.sh
            minimum=$(grep -c '=$(sbatch ' "$OUT/$mode/work/bids_denoise_wf/batch/submit_jobs.sh")
            log "$mode: submit_jobs.sh holds $minimum sbatch calls; $(find "$OUT/$mode/work" -name 'batchscript_*.sh' | wc -l) batch scripts"
        fi
        log "$mode: batch scripts run '$(grep -ho '^/[^ ]*python[^ ]*' "$OUT/$mode/work/bids_denoise_wf/batch/"batchscript_*.sh | sort -u | xargs)'"
        check_jobs "$mode" "$mark" "$minimum"
        compare "$mode" "$REFERENCE"
        ;;
    array)
        recipe=$REPO/workflows/slurm/bids_denoise_array.sbatch
        recipe_env=(RUNTIME=none BIDS_DENOISE="$BIDS_DENOISE" BIDS_DIR="$DATASET" OUTPUT_DIR="$OUT/array/out"
                    WORKDIR="$OUT/array/work" EXTRA_ARGS="${SELECT[*]}")
        mkdir -p "$OUT/array/logs" "$OUT/array/dry"
        # (a) real Slurm variables, DRY_RUN=1: the container command of one task per participant
        printf '%s\n' "${ALL_SUBJECTS[@]}" >"$OUT/array/all_participants.txt"
        n=${#ALL_SUBJECTS[@]}
        log "array: DRY_RUN=1 sbatch --array=1-$n --wait (container commands of all participants)"
        env DRY_RUN=1 BIDS_DIR="$DATASET" OUTPUT_DIR=/project/derivatives IMAGE=/images/bids_denoise.sif \
            WORKDIR=/scratch/work PARTICIPANTS_FILE="$OUT/array/all_participants.txt" \
            sbatch --wait --array=1-"$n" --cpus-per-task=2 --mem=3G --time=5 -J bids_denoise_dry \
            -o "$OUT/array/dry/task_%a.log" --export=ALL "$recipe" >/dev/null \
            || { tail -n 20 "$OUT"/array/dry/*.log; fail "array: the DRY_RUN=1 array failed"; }
        for i in $(seq "$n"); do
            label=${ALL_SUBJECTS[i - 1]}
            command=$(grep -m1 '^apptainer run' "$OUT/array/dry/task_$i.log" || true)
            echo "    task $i: $command"
            for want in "--cleanenv" "-B $DATASET:/data:ro" "-B /project/derivatives:/out" \
                "-B /scratch/work/sub-$label:/work" "--participant-label $label " "--nprocs 2 " "--mem-gb 3.0 " \
                "--skip-bids-validation"; do
                [[ $command == *"$want"* ]] || fail "array: task $i (sub-$label) command lacks '$want'"
            done
        done
        dry_jobs=$(sed -n 's/.*job \([0-9]*\) task.*/\1/p' "$OUT/array/dry/task_1.log")
        # (b) the one-off validation, then a real array run (RUNTIME=none: the venv, no container)
        printf '%s\n' "${SELECTED[@]}" >"$OUT/array/participants.txt"
        n=${#SELECTED[@]}
        log "array: one-off validation (VALIDATE_ONLY=1, outside Slurm)"
        t0=$(now)
        env "${recipe_env[@]}" VALIDATE_ONLY=1 bash "$recipe" >"$OUT/array/validate.log" 2>&1 \
            || { tail -n 40 "$OUT/array/validate.log"; fail "array: VALIDATE_ONLY=1 failed"; }
        TIMES[array_validation]=$(elapsed "$t0")
        mark=$(marker_job)
        log "array: sbatch --array=1-$n --wait ${recipe#"$REPO"/} (participants ${SELECTED[*]}, RUNTIME=none)"
        t0=$(now)
        status=0
        env "${recipe_env[@]}" PARTICIPANTS_FILE="$OUT/array/participants.txt" \
            sbatch --wait --array=1-"$n" --cpus-per-task=2 --mem=4G --time=20 \
            -o "$OUT/array/logs/bids_denoise_%A_%a.log" --export=ALL "$recipe" >/dev/null || status=$?
        TIMES[array]=$(elapsed "$t0")
        for f in "$OUT"/array/logs/*.log; do
            sed -n '1p;$p' "$f" | sed "s|^|    $(basename "$f"): |"
        done
        ((status == 0)) || { tail -n 30 "$OUT"/array/logs/*.log; fail "array: sbatch --wait exited with $status"; }
        check_jobs array "$mark" "$n"
        log "array: the DRY_RUN=1 array was job $dry_jobs ($(wc -l <"$OUT/array/all_participants.txt") tasks)"
        compare array "$REFERENCE"
        ;;
    *) fail "unknown mode '$mode' in SLURM_TEST_MODES" ;;
    esac
done

# ------------------------------------------------------------------------------- summary
echo
echo "== bids_denoise on Slurm: summary =="
printf '  %-22s %s s\n' "cluster start" "${TIMES[cluster_start]}"
printf '  %-22s %s s (participants %s %s; --nprocs 2 --omp-nthreads 1)\n' multiproc "${TIMES[multiproc]}" \
    "${SELECTED[*]}" "${SELECT[*]}"
for mode in $MODES; do
    if [[ $mode == array ]]; then
        printf '  %-22s %s s\n' "array validation" "${TIMES[array_validation]}"
    fi
    printf '  %-22s %s s, %s Slurm jobs; %s\n' "$mode" "${TIMES[$mode]}" "${JOBS[$mode]}" "${RESULTS[$mode]%% in /*}"
done
SUCCESS=1
log "all Slurm modes match the MultiProc run"
