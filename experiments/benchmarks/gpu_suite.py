"""One command that proves the GPU path, in at most 8 minutes on one H100/H200; prints and writes one JSON.

    bash ../shared/device/make-bundle.sh             # here, once: .devbundle/ (Ray, Optuna, weights, 5k faces)
    # on the lent machine, carrying .devbundle:
    source .devbundle/setup.sh && python3 experiments/benchmarks/gpu_suite.py --out $OUT/gpu_suite.json

Steps, each timed: (1) training throughput of both architectures at 64 and 128 px in the resolved default
(bf16, channels_last) against fp32 NCHW, with peak memory; (2) aggregate throughput of packed trials: N
processes training scratch @128 on the one GPU at once; (3) a packed search (16 trials × ≤20 epochs, ASHA,
0.25 GPU per trial) with its wall time and the GPU's utilisation sampled every half second, then its
retraining and report; (4) an export of the marked model with the ONNX/TorchScript parity check.
"""
import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Throughput, packing, a packed search, retraining and export on one GPU.")
    p.add_argument("--out", default="gpu_suite.json", help="JSON file to write")
    p.add_argument("--data", default=None, help="UTKFace folder (default: $UTKFACE_DIR)")
    p.add_argument("--work", default="/tmp/gpu_suite", help="scratch folder for the search")
    p.add_argument("--packed", type=int, default=8, help="concurrent training processes in step 2")
    p.add_argument("--num-samples", type=int, default=16)
    p.add_argument("--max-epochs", type=int, default=20)
    p.add_argument("--gpus-per-trial", type=float, default=0.25)
    p.add_argument("--image-size", type=int, default=128)
    return p


class Utilisation(threading.Thread):
    """Samples the GPU's utilisation (NVML) every half second while a step runs."""

    def __init__(self):
        super().__init__(daemon=True)
        self.samples: list[int] = []
        self.memory: list[int] = []
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        except Exception:  # no NVML: utilisation stays unknown
            return
        while not self.stop.wait(0.5):
            self.samples.append(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
            self.memory.append(pynvml.nvmlDeviceGetMemoryInfo(handle).used)

    def summary(self) -> dict:
        if not self.samples:
            return {"gpu_utilisation": None}
        busy = sorted(self.samples)
        return {"gpu_utilisation_mean_pct": round(sum(busy) / len(busy), 1),
                "gpu_utilisation_median_pct": busy[len(busy) // 2],
                "gpu_memory_used_max_gib": round(max(self.memory) / 2**30, 2)}


def run(cmd: list[str], log: Path, timeout: int) -> tuple[int, float, str]:
    """Run ``cmd`` from the project root; (exit code, seconds, stdout)."""
    start = time.perf_counter()
    try:
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        code, out, err = done.returncode, done.stdout, done.stderr
    except subprocess.TimeoutExpired as exc:
        code, out, err = 124, exc.stdout or "", exc.stderr or ""
        out, err = (out.decode() if isinstance(out, bytes) else out), (err.decode() if isinstance(err, bytes) else err)
    log.write_text(f"$ {' '.join(cmd)}\n{out}\n{err}")
    return code, round(time.perf_counter() - start, 1), out


def main(args: argparse.Namespace) -> int:
    import torch

    data = args.data or os.environ.get("UTKFACE_DIR")
    if not data or not torch.cuda.is_available():
        print("error: needs a CUDA GPU and --data DIR (or UTKFACE_DIR; `source .devbundle/setup.sh` sets it)",
              file=sys.stderr)
        return 2
    py = sys.executable
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("FACETUNE_CACHE", str(work / "cache"))
    report = {"card": torch.cuda.get_device_name(0), "torch": torch.__version__, "steps": {}}

    bench = "experiments/benchmarks/throughput.py"
    for size in (64, 128):
        code, seconds, out = run([py, bench, "--image-size", str(size), "--steps", "40"], work / f"tp{size}.log", 240)
        report["steps"][f"throughput_{size}"] = {"rc": code, "seconds": seconds,
                                                 **(json.loads(out) if code == 0 else {})}

    cmd = [py, bench, "--arch", "scratch", "--only-default", "--rounds", "1", "--image-size", "128", "--steps", "60"]
    start = time.perf_counter()
    procs = [subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
             for _ in range(args.packed)]
    outs = [p.communicate(timeout=240)[0] for p in procs]
    rates = [json.loads(o)["results"][0]["default_images_per_second"] for o in outs if o.strip()]
    report["steps"]["packed_throughput_scratch_128"] = {
        "processes": args.packed, "finished": len(rates), "seconds": round(time.perf_counter() - start, 1),
        "aggregate_images_per_second": round(sum(rates), 1), "per_process": rates}

    sampler = Utilisation()
    sampler.start()
    search = [py, "search/run.py", "--arch", "scratch", "--preset", "full", "--data", data, "--storage-path", str(work),
              "--name", f"packed-{int(time.time())}", "--num-samples", str(args.num_samples), "--max-epochs",
              str(args.max_epochs), "--grace-period", "2", "--reduction-factor", "3", "--gpus-per-trial",
              str(args.gpus_per_trial), "--cpus-per-trial", "1", "--image-size", str(args.image_size),
              "--top-k", "1", "--seeds", "2"]
    code, seconds, out = run(search, work / "search.log", 360)
    sampler.stop.set()
    experiment = work / search[search.index("--name") + 1]
    step = {"rc": code, "seconds": seconds, "command": " ".join(search[1:]), **sampler.summary()}
    for line in out.splitlines():
        if "marked model" in line or line.startswith("best "):
            step.setdefault("results", []).append(line.strip())
    report["steps"]["packed_search_retrain_report"] = step

    code, seconds, out = run([py, "search/serve/export.py", "--experiment", str(experiment)], work / "export.log", 180)
    report["steps"]["export"] = {"rc": code, "seconds": seconds, **(json.loads(out) if code == 0 else {})}
    report["total_seconds"] = round(sum(s.get("seconds", 0) for s in report["steps"].values()), 1)
    text = json.dumps(report, indent=2)
    Path(args.out).write_text(text + "\n")
    print(text)
    return 0 if all(s.get("rc", 0) == 0 for s in report["steps"].values()) else 1


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
