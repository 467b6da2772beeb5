#!/usr/bin/env bash
# The embedded KCD demo on real Fashion-MNIST, in one command (about ten
# minutes on a 2-core CPU):
#   1. decompress the Debian package's Fashion-MNIST into data/fashion_mnist
#   2. train the teacher (skipped when work_dirs/demo_teacher/teacher.pth
#      exists) and keep only its weights in teacher.pth
#   3. distil the student with KCD (or any student config given)
#   4. report the student's test accuracy and where the records are
#
# Usage: bash tools/run_demo.sh [STUDENT_CONFIG] [WORK_DIR]
#        bash tools/run_demo.sh --teacher-only   (steps 1-2: data and teacher;
#                                                 benchmarks/run.py uses it)
#   STUDENT_CONFIG  default configs/kcd/kcd_demo_fashionmnist.py
#                   (configs/kd/kd_demo_fashionmnist.py gives plain KD)
#   WORK_DIR        default work_dirs/demo_<config name>
# Environment: PYTHON (default python), TEACHER_DIR (default
#   work_dirs/demo_teacher).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

TEACHER_ONLY=0
if [[ "${1:-}" == "--teacher-only" ]]; then
    TEACHER_ONLY=1
    shift
fi
PYTHON="${PYTHON:-python}"
TEACHER_CFG="configs/teachers/resnet18_w16_fashionmnist.py"
TEACHER_DIR="${TEACHER_DIR:-work_dirs/demo_teacher}"
TEACHER_PTH="$TEACHER_DIR/teacher.pth"
STUDENT_CFG="${1:-configs/kcd/kcd_demo_fashionmnist.py}"
STUDENT_NAME="$(basename "$STUDENT_CFG" .py)"
STUDENT_DIR="${2:-work_dirs/demo_${STUDENT_NAME}}"

if [[ ! -f "$STUDENT_CFG" ]]; then
    echo "error: student config $STUDENT_CFG not found" >&2
    exit 1
fi

stamp() { date +%s; }
T0=$(stamp)

echo "== [1/4] Fashion-MNIST data"
"$PYTHON" tools/prepare_fashion_mnist.py --dst data/fashion_mnist

echo "== [2/4] teacher ($TEACHER_CFG)"
if [[ -f "$TEACHER_PTH" ]]; then
    echo "found $TEACHER_PTH, not training the teacher again"
else
    "$PYTHON" tools/train.py "$TEACHER_CFG" --work-dir "$TEACHER_DIR"
    # CheckpointHook(save_last=True) names the newest checkpoint here.
    LAST="$(cat "$TEACHER_DIR/last_checkpoint")"
    "$PYTHON" tools/model_converters/extract_state_dict.py \
        "$LAST" "$TEACHER_PTH"
fi
T1=$(stamp)
if [[ "$TEACHER_ONLY" == 1 ]]; then
    echo "teacher:    $TEACHER_PTH (ready in $((T1 - T0)) s, data included)"
    exit 0
fi

echo "== [3/4] student ($STUDENT_CFG)"
"$PYTHON" tools/train.py "$STUDENT_CFG" --work-dir "$STUDENT_DIR" \
    --cfg-options "model.teacher_ckpt=$TEACHER_PTH"
T2=$(stamp)

echo "== [4/4] result"
# The last validation line of the newest run is on the test set
# (Fashion-MNIST has no separate validation split).
LOG="$(ls -t "$STUDENT_DIR"/*/*.log 2>/dev/null | head -n 1 || true)"
if [[ -n "$LOG" ]]; then
    echo "final validation (10,000 test images):"
    grep 'Epoch(val)' "$LOG" | tail -n 1 | sed 's/^.*Epoch(val)/  Epoch(val)/'
fi
echo "teacher:    $TEACHER_PTH (trained in $((T1 - T0)) s, data included)"
echo "student:    $STUDENT_DIR (trained in $((T2 - T1)) s)"
echo "logs:       ${LOG:-none found under $STUDENT_DIR}"
if [[ -f "$STUDENT_DIR/kcd_stages.jsonl" ]]; then
    echo "KCD stages: $STUDENT_DIR/kcd_stages.jsonl"
    cat "$STUDENT_DIR/kcd_stages.jsonl"
else
    echo "KCD stages: none ($STUDENT_CFG is not a KCD config)"
fi
echo "total:      $(($(stamp) - T0)) s"
