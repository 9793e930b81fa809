"""Memory of concurrent trials on one node: one shared copy of the faces against a private copy each; JSON.

    python experiments/benchmarks/memory.py --data ../shared/data/utkface-5k --image-size 64 --repeat 5 --trials 2

Each trial is a Ray actor that receives the search's decoded faces as a trial does (through the object store),
takes its train and validation parts and builds its training tensors, then reads its own memory from
/proc/self/smaps_rollup: private (USS) and shared. Both ways run in one process, one after the other:
``shared`` ships ``Faces`` (pickled as numpy arrays, which the object store maps into every process) and takes
the parts as views; ``private`` ships the tensors as they were shipped before (pickled by torch: a copy per
process) and takes the parts as copies. ``--repeat`` tiles the faces in memory to reach the full UTKFace's
size (23,707 files) from the 5k subset: 4,980 × 5 = 24,900 faces.
"""
import argparse
import json
import sys

import torch

from data_utils.dataset import Faces, load_faces, make_split
from experiments.config import TrainConfig


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Private and shared memory of concurrent trials on one node.")
    p.add_argument("--data", default=None, help="UTKFace folder (default: $UTKFACE_DIR)")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--repeat", type=int, default=5, help="tile the faces this many times (5: the full UTKFace's size)")
    p.add_argument("--trials", type=int, default=2, help="concurrent trial processes")
    return p


def smaps() -> dict[str, int]:
    """This process's memory in MB: rss, pss, private (USS) and shared, from /proc/self/smaps_rollup."""
    fields = {}
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and parts[1].isdigit():
                fields[parts[0].rstrip(":")] = int(parts[1]) * 1024
    mb = lambda *keys: round(sum(fields.get(k, 0) for k in keys) / 1e6)  # noqa: E731
    return {"rss_mb": mb("Rss"), "pss_mb": mb("Pss"), "private_mb": mb("Private_Clean", "Private_Dirty"),
            "shared_mb": mb("Shared_Clean", "Shared_Dirty")}


def trial_memory(payload, split, shared: bool) -> dict[str, int]:
    """What a trial holds once its data is ready (search.hpo.trainable.restored_trainer up to the model)."""
    from experiments.train import TensorData, fit_parts

    torch.set_num_threads(1)
    if shared:
        train, val = fit_parts(payload, split, TrainConfig())  # a search trial's parts: train and validation
    else:  # the way before: tensors pickled by torch, parts copied
        faces = Faces(payload["images"], payload["ages"], payload["genders"], payload["names"], payload["sha256"],
                      payload["report"])
        train, val = faces.subset(split.train), faces.subset(split.val)
    parts = [TensorData.from_faces(part, torch.device("cpu")) for part in (train, val)]  # noqa: F841 (held while read)
    return smaps()


def main(args: argparse.Namespace) -> int:
    import ray

    base = load_faces(args.data, args.image_size)
    n = len(base) * args.repeat
    tile = lambda t: t.repeat(args.repeat, *([1] * (t.dim() - 1)))  # noqa: E731
    faces = Faces(tile(base.images), tile(base.ages), tile(base.genders), base.names * args.repeat,
                  [f"{h}-{i}" for i in range(args.repeat) for h in base.sha256], base.report)
    split = make_split(faces)
    ray.init(address="local", num_cpus=args.trials, include_dashboard=False, log_to_driver=False)
    probe = ray.remote(num_cpus=1, max_calls=1)(trial_memory)  # a fresh process per trial, as Tune gives
    out = {"faces": n, "image_size": args.image_size, "pixels_mb": round(faces.images.numel() / 1e6),
           "trials": args.trials}
    for label, shared in (("private", False), ("shared", True)):
        payload = faces if shared else {"images": faces.images, "ages": faces.ages, "genders": faces.genders,
                                        "names": faces.names, "sha256": faces.sha256, "report": faces.report}
        ref = ray.put(payload)
        per_trial = ray.get([probe.remote(ref, split, shared) for _ in range(args.trials)])
        out[label] = {"per_trial": per_trial,
                      "private_mb_mean": round(sum(t["private_mb"] for t in per_trial) / len(per_trial)),
                      "shared_mb_mean": round(sum(t["shared_mb"] for t in per_trial) / len(per_trial))}
        del ref
    out["private_mb_saved_per_trial"] = out["private"]["private_mb_mean"] - out["shared"]["private_mb_mean"]
    ray.shutdown()
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
