#!/usr/bin/env bash
# Does memprobe return with the GPUs free?  After each run: how long memprobe waited for NVML to stop
# listing its workers (run.json gpu_release_s), and how many compute processes nvidia-smi lists right after.
#   [TP=2] bash tools/gpu_release_check.sh results/<name>
set -u
R=${1:?usage: gpu_release_check.sh RESULTS_FOLDER}
TP=${TP:-2}
mkdir -p "$R"
export PYTHONUNBUFFERED=1
M="python3 -m memprobe"
{ date -u; nvidia-smi -L; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; } > "$R/environment.txt" 2>&1
L="$R/release.txt"; : > "$L"
for i in 1 2 3; do
  for stack in full:v1 full lean; do
    id=tp$TP-ep$TP-${stack/:/-}-$i
    $M run --tp $TP --ep $TP --stack $stack --quiet --out-dir "$R/runs" --run-id $id > /dev/null 2>&1
    code=$?
    left=$(nvidia-smi --query-compute-apps=pid --format=csv,noheader | wc -l)
    waited=$(python3 -c "import json,sys;print(json.load(open(sys.argv[1])).get('gpu_release_s'))" "$R/runs/$id/run.json")
    echo "$id: exit code $code, memprobe waited ${waited} s for NVML to drop its workers, nvidia-smi lists $left compute processes right after" >> "$L"
  done
done
$M compare --tp $TP --ep $TP --quiet --out-dir "$R" --run-id compare > /dev/null 2>&1
echo "compare (side by side): exit code $?, nvidia-smi lists $(nvidia-smi --query-compute-apps=pid --format=csv,noheader | wc -l) compute processes right after" >> "$L"
python3 - "$R/compare" >> "$L" <<'PY'
import json, pathlib, sys
for run in sorted(pathlib.Path(sys.argv[1]).glob("*/run.json")):
    print(f"  {run.parent.name}: gpu_release_s {json.loads(run.read_text()).get('gpu_release_s')}")
PY
find "$R" -name torchrun.log -size +2M -delete
