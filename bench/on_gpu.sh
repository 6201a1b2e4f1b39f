#!/usr/bin/env bash
# The GPU checks of a session that is lent a GPU machine, in one go (the device tool's `run`, from the repository
# root; results under $OUT): the hardware, the runner's step time (bench/step_time.py), the probes' overhead
# (bench/probe_overhead.py --device cuda) and the study on the GPU, timed. Each stage has its own time limit so that
# what finished comes back when a later one runs long.
set -u
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
{ nvidia-smi -L; nproc; python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers',
transformers.__version__, torch.cuda.get_device_name(), 'bf16', torch.cuda.is_bf16_supported())"; } > "$OUT/hardware.txt" 2>&1
timeout "${STEP_TIME_S:-120}" python3 bench/step_time.py --device cuda --steps 20 --repeats 3 > "$OUT/step_time.txt" 2>&1
timeout "${OVERHEAD_S:-180}" python3 bench/probe_overhead.py --device cuda --steps 20 --repetitions 3 \
    > "$OUT/probe_overhead.txt" 2>&1
start=$(date +%s)
timeout "${STUDY_S:-330}" python3 -m diagnostics.study --out /tmp/study --device cuda > "$OUT/study.log" 2>&1
echo "study exit $? after $(( $(date +%s) - start )) s" >> "$OUT/study.log"
cp /tmp/study/report.md "$OUT/" 2>/dev/null
tar czf "$OUT/study-figures.tgz" -C /tmp/study figures report.html 2>/dev/null
exit 0
