#!/usr/bin/env bash
# The GPU check, on a machine with an NVIDIA GPU and this repository (no network needed):
#
#   bash scripts/gpu-check.sh [BUNDLE.tar.gz]      (default: the newest bundle in /var/cache/tritonfleet/bundles)
#
# 1. nvidia-smi answers; the facts script's own `gpus` probe runs here and tritonfleet's parser reads every GPU
#    (index, name, UUID, memory, driver, compute capability, MIG mode); the doctor's GPU check judges the driver.
# 2. The bundle is unpacked into a temporary folder (as tests/test_bundle.py's server test does), with the stub for
#    the distribution's /usr/bin/python3.X that has its shared libpython and numpy (below 2 before Triton 2.52):
#    the stub embeds that libpython, so it sees that Python's site folders, not a pyenv's or a venv's.
# 3. tritonserver starts with one KIND_GPU Python model on GPU 0, which reports the instance kind and device id
#    Triton gave it; the check infers over HTTP, looks for the instance's GPU line in the server's log and for the
#    server (or its stub) in `nvidia-smi --query-compute-apps`.
#
# It prints one PASS/FAIL/SKIP line per check and a summary on stdout, and exits 1 when a check failed (2 when it
# could not start: no nvidia-smi, no bundle). Runs unattended in well under 5 minutes; leaves nothing behind but,
# when GPU_CHECK_KEEP names a folder, the server's log and nvidia-smi's answers copied there.
set -uo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}        # the interpreter that imports tritonfleet (the doctor's check needs its deps)
READY_TIMEOUT=${READY_TIMEOUT:-180}
failed=0
work=""
server_pid=""

report() { printf '%-4s %-22s %s\n' "$1" "$2" "$3"; [ "$1" = FAIL ] && failed=1; return 0; }
stop() { echo "FAIL $1"; echo "gpu-check: could not run: $1"; exit 2; }

cleanup() {
  if [ -n "${GPU_CHECK_KEEP:-}" ] && [ -n "$work" ]; then
    mkdir -p "$GPU_CHECK_KEEP" && cp "$work"/*.log "$work"/*.txt "$GPU_CHECK_KEEP"/ 2>/dev/null
  fi
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill "$server_pid" 2>/dev/null
    for _ in $(seq 1 30); do kill -0 "$server_pid" 2>/dev/null || break; sleep 1; done
    kill -9 "$server_pid" 2>/dev/null
  fi
  [ -n "$work" ] && rm -rf "$work"
}
trap cleanup EXIT

# ---- 1. the GPUs as tritonfleet sees them ------------------------------------------------------------------------
command -v nvidia-smi >/dev/null 2>&1 ||
  stop "no nvidia-smi on PATH: this check needs a machine with an NVIDIA GPU and its driver"
if ! smi_list=$(nvidia-smi -L 2>&1) || ! grep -q '^GPU 0' <<<"$smi_list"; then
  stop "nvidia-smi lists no GPU: ${smi_list:0:300}"
fi
report PASS nvidia-smi "$(head -n 1 <<<"$smi_list")"

bundle=${1:-$(ls -t /var/cache/tritonfleet/bundles/triton-*.tar.gz 2>/dev/null | head -n 1)}
[ -n "$bundle" ] && [ -f "$bundle" ] ||
  stop "no bundle: pass the bundle tarball (\`invoke bundle\` prints its path) as the first argument"

work=$(mktemp -d /tmp/gpu-check.XXXXXX)
gpus_out="$work/gpus.txt"
"$PYTHON" - "$REPO" "$gpus_out" <<'EOF'
import subprocess, sys
sys.path.insert(0, sys.argv[1])
from tritonfleet.engine import evidence
script = evidence.script(evidence.gpus(timeout_s=20))
out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=60).stdout
open(sys.argv[2], "w").write(evidence.parse_output(out).sections.get("gpus", ""))
EOF
if [ -s "$gpus_out" ]; then
  report PASS gpus-probe "the facts script's nvidia-smi query answered ($(wc -l < "$gpus_out") line(s))"
else
  report FAIL gpus-probe "the facts script's nvidia-smi query printed nothing"
fi
"$PYTHON" - "$REPO" "$gpus_out" <<'EOF' || failed=1
import sys
sys.path.insert(0, sys.argv[1])
from tritonfleet.engine import evidence
text, failed = open(sys.argv[2]).read(), False


def report(verdict, check, detail):
    global failed
    failed = failed or verdict == "FAIL"
    print(f"{verdict:<4} {check:<22} {detail}")


gpus = evidence.parse_gpus(text)
if not gpus:
    report("FAIL", "gpu-facts", f"nvidia-smi answered but the parser found no GPU in: {text!r}")
for gpu in gpus:
    missing = [f for f in ("name", "uuid", "driver") if not getattr(gpu, f)]  # known on every GPU
    unreported = [f for f in ("memory_mib", "compute_cap") if not getattr(gpu, f)]  # [N/A] on some
    report("FAIL" if missing else "PASS", "gpu-facts", f"{gpu.describe()} {gpu.uuid}"
           + (f"; missing: {', '.join(missing)}" if missing else "")
           + (f"; nvidia-smi reports no {', '.join(unreported)}" if unreported else ""))
try:
    from tritonfleet.triton import doctor, layout
except ImportError as exc:
    report("SKIP", "doctor-gpu-check", f"cannot import tritonfleet.triton.doctor ({exc}): set PYTHON to an "
                                       "interpreter with tritonfleet's dependencies")
else:
    ev = doctor.parse_evidence(f"@@begin gpus\n{text}\n@@end\n")
    diagnosis = doctor.Diagnosis("gpu-check")
    doctor.check_gpus(doctor._Context(ev, dict(layout.DEFAULT_VARS), "127.0.0.1", "gpu-check"), diagnosis)
    errors = [f.title for f in diagnosis.errors]
    report("FAIL" if errors else "PASS", "doctor-gpu-check",
           "; ".join(errors) or f"{len(ev.host.gpus)} GPU(s), driver new enough for the bundle's CUDA "
                                f"{layout.BUNDLE_CUDA_VERSION} runtime (>= {layout.MIN_DRIVER_VERSION})")
sys.exit(1 if failed else 0)
EOF

# ---- 2. the bundle, unpacked, with a stub for a local Python ----------------------------------------------------
root="$work/opt-tritonserver"
mkdir -p "$root"
if ! tar -xzf "$bundle" -C "$root" --no-same-owner; then
  report FAIL bundle "cannot unpack $bundle"; exit 1
fi
triton_version=$(cat "$root/TRITON_VERSION")
report PASS bundle "$(basename "$bundle"): Triton $triton_version, $(du -sh "$root" | cut -f1) unpacked"

numpy_below=""  # Triton before 2.52 was built before numpy 2 (python_backend PR #384)
[ "$(printf '%s\n' "$triton_version" 2.52.0 | sort -V | head -n 1)" != 2.52.0 ] && numpy_below=2
stub="" chosen=""
for v in $(ls "$root/python_backend_stubs" | sort -t. -k2 -rn); do
  dir="$root/python_backend_stubs/$v"
  [ -x "/usr/bin/python$v" ] || continue
  if LD_LIBRARY_PATH="$root/lib" ldd "$dir/triton_python_backend_stub" 2>&1 | grep -q "not found"; then
    continue  # no shared libpython$v here (Debian: apt-get install libpython$v)
  fi
  numpy=$(cd / && env -i "/usr/bin/python$v" -c 'import numpy; print(numpy.__version__)' 2>/dev/null) || continue
  [ -n "$numpy_below" ] && [ "${numpy%%.*}" -ge "$numpy_below" ] && continue
  stub="$dir/triton_python_backend_stub" chosen="/usr/bin/python$v with numpy $numpy"
  break
done
if [ -z "$stub" ]; then
  report FAIL python "no /usr/bin/python3.X here has a stub in the bundle, its shared libpython and numpy${numpy_below:+ below $numpy_below}"
  echo "gpu-check: $([ "$failed" = 1 ] && echo FAILED || echo passed)"; exit 1
fi
install -m 0755 "$stub" "$root/backends/python/triton_python_backend_stub"
report PASS python "$chosen (stub ${stub#"$root"/})"

# ---- 3. a KIND_GPU Python model on GPU 0 --------------------------------------------------------------------------
repo="$work/models"
mkdir -p "$repo/gpu_probe/1"
cat > "$repo/gpu_probe/config.pbtxt" <<'EOF'
name: "gpu_probe"
backend: "python"
max_batch_size: 0
input [ { name: "IN" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [
  { name: "OUT" data_type: TYPE_FP32 dims: [ 4 ] },
  { name: "DEVICE" data_type: TYPE_INT32 dims: [ 1 ] }
]
instance_group [ { kind: KIND_GPU count: 1 gpus: [ 0 ] } ]
EOF
cat > "$repo/gpu_probe/1/model.py" <<'EOF'
import os

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """Doubles its input and answers the device Triton placed this instance on."""

    def initialize(self, args):
        self.kind, self.device = args["model_instance_kind"], int(args["model_instance_device_id"])
        print(f"gpu_probe: instance kind {self.kind} device {self.device} stub pid {os.getpid()}", flush=True)

    def execute(self, requests):
        return [pb_utils.InferenceResponse([
            pb_utils.Tensor("OUT", (pb_utils.get_input_tensor_by_name(r, "IN").as_numpy() * 2).astype(np.float32)),
            pb_utils.Tensor("DEVICE", np.array([self.device], dtype=np.int32))]) for r in requests]
EOF

read -r http grpc metrics < <("$PYTHON" -c '
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))')
log="$work/tritonserver.log"
# a clean environment: a pyenv's or venv's variables must not reach the stub's embedded interpreter
env -i PATH=/usr/bin:/bin HOME="$work" LD_LIBRARY_PATH="$root/lib" "$root/bin/tritonserver" --model-repository="$repo" \
  --backend-directory="$root/backends" --exit-on-error=false --log-verbose=1 \
  --http-port="$http" --grpc-port="$grpc" --metrics-port="$metrics" \
  --http-address=127.0.0.1 --grpc-address=127.0.0.1 --metrics-address=127.0.0.1 > "$log" 2>&1 &
server_pid=$!

ready=""
for _ in $(seq 1 "$READY_TIMEOUT"); do
  kill -0 "$server_pid" 2>/dev/null || break
  grep -q "failed to load 'gpu_probe'" "$log" && break
  if "$PYTHON" -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:$http/v2/models/gpu_probe/ready', timeout=2).status != 200)" 2>/dev/null; then
    ready=yes; break
  fi
  sleep 1
done
if [ -z "$ready" ]; then
  report FAIL server "gpu_probe did not become ready (waited at most ${READY_TIMEOUT} s); the log's errors:"
  grep -E '^E[0-9]|error|UNAVAILABLE' "$log" | head -n 15 | sed 's/^/     /'
  if [ -n "$(command -v "$PYTHON")" ]; then
    "$PYTHON" - "$REPO" "$log" <<'EOF'
import sys
sys.path.insert(0, sys.argv[1])
try:
    from tritonfleet.triton import signatures
except ImportError:
    sys.exit(0)
for sig, line in signatures.match_lines(open(sys.argv[2], errors="replace").read().splitlines()):
    print(f"     doctor signature {sig.id}: {sig.cause}")
EOF
  fi
else
  report PASS server "tritonserver $triton_version ready with gpu_probe (pid $server_pid, HTTP $http)"
  answer=$("$PYTHON" - "$http" <<'EOF'
import json, sys, urllib.request
body = {"inputs": [{"name": "IN", "shape": [4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
request = urllib.request.Request(f"http://127.0.0.1:{sys.argv[1]}/v2/models/gpu_probe/infer",
                                 json.dumps(body).encode(), {"Content-Type": "application/json"})
try:
    outputs = {o["name"]: o["data"] for o in json.load(urllib.request.urlopen(request, timeout=30))["outputs"]}
except Exception as exc:  # the report names whatever went wrong
    print(f"FAIL {type(exc).__name__}: {exc}")
else:
    ok = outputs.get("OUT") == [2, 4, 6, 8] and outputs.get("DEVICE") == [0]
    print(f"{'PASS' if ok else 'FAIL'} OUT={outputs.get('OUT')} DEVICE={outputs.get('DEVICE')}")
EOF
)
  report "${answer%% *}" http-inference "${answer#* }"  # the client always prints PASS or FAIL first

  # the Python backend's own line (python_be.cc, TRITONBACKEND_ModelInstanceInitialize) and the model's
  instance=$(grep -E 'gpu_probe_0_0 \(GPU device 0\)|gpu_probe: instance kind' "$log" | head -n 3)
  if grep -q 'gpu_probe_0_0 (GPU device 0)' <<<"$instance" && grep -q 'kind GPU device 0' <<<"$instance"; then
    report PASS instance-on-gpu "$(tr '\n' '|' <<<"$instance" | cut -c1-300)"
  else
    report FAIL instance-on-gpu "no instance line on GPU 0 in the log: ${instance:-none}"
  fi

  stub_pids=$(pgrep -P "$server_pid" 2>/dev/null | tr '\n' ' ')
  apps=$(nvidia-smi --query-compute-apps=pid,process_name --format=csv,noheader 2>&1)
  on_gpu=$(grep -E "^($(tr ' ' '|' <<<"$server_pid $stub_pids" | sed 's/|*$//'))," <<<"$apps")
  if [ -n "$on_gpu" ]; then
    report PASS compute-apps "$(tr '\n' '|' <<<"$on_gpu")"
  else
    report FAIL compute-apps "neither tritonserver ($server_pid) nor its stub ($stub_pids) in: ${apps:0:300}"
  fi
fi

nvidia-smi > "$work/nvidia-smi.txt" 2>&1
echo "gpu-check: $([ "$failed" = 1 ] && echo FAILED || echo passed) (bundle $(basename "$bundle"))"
exit "$failed"
