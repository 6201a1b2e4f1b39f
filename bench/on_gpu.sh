#!/usr/bin/env bash
# The GPU checks, in one go (from the repository root; results under $OUT): the hardware, the runner's step time
# (bench/step_time.py), the probes' overhead and operation counts (bench/probe_overhead.py --device cuda) at batch
# 4 x 32 and 32 x 128, and the study on the GPU, timed. Each stage has its own time limit so that what finished
# comes back when a later one runs long; SKIP_STUDY=1 leaves the study out (the probes' checks alone take about
# 5 minutes). AGAINST=DIR also times the probes package in DIR (a checkout of another commit) beside this one's.
set -u
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
{ nvidia-smi -L; nproc; python3 -c "import torch, transformers; print('torch', torch.__version__, 'CUDA', torch.version.cuda,
'transformers', transformers.__version__, torch.cuda.get_device_name(), 'bf16', torch.cuda.is_bf16_supported())"; git log -1 --format='commit %h %cd'; } > "$OUT/hardware.txt" 2>&1
timeout "${STEP_TIME_S:-120}" python3 bench/step_time.py --device cuda --steps 20 --repeats 3 > "$OUT/step_time.txt" 2>&1
against=()
[ -n "${AGAINST:-}" ] && against=(--against "$AGAINST")
for shape in "4 32" "32 128"; do
    set -- $shape
    timeout "${OVERHEAD_S:-150}" python3 bench/probe_overhead.py --device cuda --steps 20 --repetitions 3 \
        --batch "$1" --length "$2" ${against[@]+"${against[@]}"} > "$OUT/probe_overhead-$1x$2.txt" 2>&1
done
[ -n "${SKIP_STUDY:-}" ] && exit 0
start=$(date +%s)
timeout "${STUDY_S:-330}" python3 -m diagnostics.study --out /tmp/study --device cuda > "$OUT/study.log" 2>&1
echo "study exit $? after $(( $(date +%s) - start )) s" >> "$OUT/study.log"
cp /tmp/study/report.md "$OUT/" 2>/dev/null
tar czf "$OUT/study-figures.tgz" -C /tmp/study figures report.html 2>/dev/null
exit 0
