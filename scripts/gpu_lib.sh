# Sourced by scripts/gpu_check.sh and scripts/gpu_campaign.sh: time-boxed steps that record their
# outcome and never stop the script, and the summary.md they fill in.
#
# The caller sets TITLE and GPU_BUDGET_S / DRY_BUDGET_S (seconds for all steps together on the GPU /
# in a CPU dry run; BUDGET_S in the environment wins), then sources this file with the script's own
# arguments `OUT_DIR [--dry-run]` (DEVICE=cpu also means a dry run), which sets OUT, MODE, BUDGET_S,
# ROOT and SNGM_DATA. LIMIT_SCALE is a factor on every step's limit, for slow dry runs. Then it calls `step NAME LIMIT_S
# COMMAND...`. Each step runs under `timeout` with the smaller of its own limit and what is left until
# STEPS_END_S (the budget's end; a caller may move it, summary.md still states the budget) (ONLY=REGEX
# runs just the steps whose name matches; STOP_SIGNAL, default TERM, is the signal at the limit and
# KILL_AFTER_S, default 20, the grace before a SIGKILL), its output goes to $OUT/log.txt, and its status, seconds and command
# go to the table of $OUT/summary.md, rewritten after every step so that a killed script still
# leaves one. `note TEXT` adds a line under the table.

set -u
case "${1:-}" in  # the calling script's opening comment is its help; an option is no OUT_DIR
    -h|--help) sed -n '2,/^[^#]/s/^# \{0,1\}//p' "$0"; exit 0 ;;
    -*) echo "usage: $0 OUT_DIR [--dry-run] (--help: what it does)" >&2; exit 2 ;;
esac
OUT=${1:?usage: $0 OUT_DIR [--dry-run]}
MODE=gpu
if [ "${2:-}" = "--dry-run" ] || [ "${DEVICE:-cuda}" = "cpu" ]; then MODE=dry-run; fi
BUDGET_S=${BUDGET_S:-$([ "$MODE" = gpu ] && echo "$GPU_BUDGET_S" || echo "$DRY_BUDGET_S")}
ROOT=$PWD
export SNGM_DATA=${SNGM_DATA:-$HOME/.cache/sngm-bench/data}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
LOG=$OUT/log.txt
WORK=$(mktemp -d "${TMPDIR:-/tmp}/sngm-gpu.XXXXXX")  # run folders and scratch, outside $OUT
# What the steps keep is in $OUT by the end; the scratch (checkpoints, run folders) goes however the
# script ends: an exit, a failed step, a signal (bash runs an EXIT trap at a fatal signal too).
trap 'rm -rf "$WORK"' EXIT
START_S=$(date +%s)
STEPS_END_S=$(( START_S + BUDGET_S ))
ROWS=()
NOTES=()
FAILED=0
if [ -z "${PY:-}" ]; then
    if [ -x .venv/bin/python ]; then PY=$PWD/.venv/bin/python; else PY=$(command -v python3); fi
fi
: >"$LOG"

environment() {
    "$PY" - <<'EOF'
import platform, subprocess, torch
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
print(f"device: {gpu}; torch {torch.__version__} (CUDA {torch.version.cuda}); Python {platform.python_version()}; "
      f"commit {commit or 'unknown'}")
EOF
}
ENVIRONMENT=$(environment 2>&1 | tail -1)

write_summary() {
    {
        echo "# $TITLE"
        echo
        echo "$(date -u '+%Y-%m-%d %H:%M UTC'); $ENVIRONMENT; mode: $MODE; budget ${BUDGET_S} s, used $(( $(date +%s) - START_S )) s"
        echo
        echo "| step | status | seconds | limit (s) | command |"
        echo "|---|---|---|---|---|"
        printf '%s\n' "${ROWS[@]}"
        if [ ${#NOTES[@]} -gt 0 ]; then echo; printf '%s\n\n' "${NOTES[@]}"; fi
    } >"$OUT/summary.md"
}

note() {
    NOTES+=("$*")
    write_summary
}

step() {
    local name=$1 limit=$(( $2 * ${LIMIT_SCALE:-1} )) left status rc begin seconds
    shift 2
    if [ -n "${ONLY:-}" ] && ! [[ $name =~ $ONLY ]]; then return 0; fi
    left=$(( STEPS_END_S - $(date +%s) ))
    if [ "$left" -lt "$limit" ]; then limit=$left; fi
    if [ "$limit" -lt 10 ]; then
        ROWS+=("| $name | skipped: budget spent | 0 | $limit | \`$*\` |")
        FAILED=1
        write_summary
        return 1
    fi
    echo "=== $name (limit ${limit} s): $*" | tee -a "$LOG"
    begin=$(date +%s)
    timeout --signal="${STOP_SIGNAL:-TERM}" --kill-after="${KILL_AFTER_S:-20}" "$limit" "$@" >>"$LOG" 2>&1
    rc=$?
    seconds=$(( $(date +%s) - begin ))
    case $rc in
        0) status=ok ;;
        124 | 137) status="TIMEOUT" ;;
        *) status="FAILED (exit $rc)" ;;
    esac
    [ "$rc" -eq 0 ] || FAILED=1
    echo "=== $name: $status after ${seconds} s" | tee -a "$LOG"
    ROWS+=("| $name | $status | $seconds | $limit | \`$*\` |")
    write_summary
    return $rc
}
