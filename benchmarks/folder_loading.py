"""Time and peak memory to load an image folder of mixed-size JPEGs for training.

    python benchmarks/folder_loading.py --counts 2000,20000 --input-size 224
    python benchmarks/folder_loading.py --folder ../shared/data/sign_language_digits --input-size 224

Generates (once, under --work) `N` JPEG photos of random sizes (240-1280 px per side, any
aspect, smooth content plus noise so they compress like photos; 500 distinct ones written
under N names) in a split layout (train/val/test, 4 classes), then, in a fresh subprocess per measurement, loads them the
way a search does: decode + resize to the model's input size, and the model inputs for
training. It reports wall seconds, the process's peak RSS (`ru_maxrss`, including the
Python / NumPy / JAX baseline, also reported) and the bytes of the image arrays.

With a deft_jax that predates uint8 datasets (no `deft_jax.data.NormalizedImages`) the
same script measures the old path instead: `image_size` resize at load, then the whole
set preprocessed to float32.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CLASSES = ("a", "b", "c", "d")
SPLITS = (("train", 0.7), ("val", 0.15), ("test", 0.15))


def _photo_bytes(rng: np.random.Generator) -> bytes:
    """One JPEG of a random size (240-1280 px per side): a smooth colour field plus mild
    noise, so it compresses and decodes like a photo."""
    from PIL import Image

    w, h = (int(v) for v in rng.integers(240, 1281, 2))
    small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    im = Image.fromarray(small).resize((w, h), Image.BILINEAR)
    arr = np.asarray(im).astype(np.int16) + rng.integers(-12, 13, (h, w, 1), dtype=np.int16)
    buf = io.BytesIO()
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=85)
    return buf.getvalue()


def generate(root: Path, n: int, distinct: int = 500, seed: int = 0) -> Path:
    """n JPEGs under root/<split>/<class>/, cycling through `distinct` generated photos
    (decoding costs the same; generating 20,000 distinct ones would take longer than the
    measurement); reused if already complete."""
    done = root / "COMPLETE"
    if done.exists():
        return root
    rng = np.random.default_rng(seed)
    pool = [_photo_bytes(rng) for _ in range(min(n, distinct))]
    for i in range(n):
        split = SPLITS[0][0] if i % 20 < 14 else SPLITS[1][0] if i % 20 < 17 else SPLITS[2][0]
        path = root / split / CLASSES[i % len(CLASSES)] / f"img{i:06d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(pool[i % len(pool)])
    done.write_text(str(n))
    return root


def measure(folder: str, input_size: int) -> dict:
    """Runs in a fresh process: load for training, report seconds and peak RSS."""
    import jax  # noqa: F401  (part of the baseline a search has)

    import deft_jax.data as data

    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0 = time.perf_counter()
    source = {"kind": "folder", "path": folder}  # the loaders before typed sources took dicts
    mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    if hasattr(data, "NormalizedImages"):
        try:
            from deft_jax.config.sources import FolderSource
            source = FolderSource(path=folder)
        except ImportError:
            pass
        ds = data.load_dataset(source, input_size=input_size)
        t_load = time.perf_counter() - t0
        x = data.NormalizedImages(data.resize_images(ds.images, input_size), mean, std)
        stored = x.images.nbytes
        path = "uint8 at input size, normalised per batch"
    else:  # the loader before uint8 datasets: image_size, then float32 for the whole set
        ds = data.load_dataset({**source, "image_size": input_size})
        t_load = time.perf_counter() - t0
        x = data.preprocess(ds.images, input_size, mean, std)
        stored = ds.images.nbytes + x.nbytes
        path = "old: uint8 at load, whole set float32"
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"folder": folder, "images": len(ds), "input_size": input_size, "path": path,
            "seconds_load": round(t_load, 2), "seconds_total": round(seconds, 2),
            "peak_rss_mib": round(peak / 2**20), "baseline_rss_mib": round(baseline / 2**20),
            "image_arrays_mib": round(stored / 2**20), "cpus": os.cpu_count(),
            "description": ds.description}


def run_measurement(folder: Path, input_size: int) -> dict:
    cmd = [sys.executable, __file__, "--measure", str(folder), "--input-size", str(input_size)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--counts", default="2000,20000", help="generated folder sizes")
    p.add_argument("--folder", help="measure this folder instead of generated ones")
    p.add_argument("--input-size", type=int, default=224)
    p.add_argument("--work", default="/tmp/deft_jax_folder_bench", help="where to generate")
    p.add_argument("--out", help="write the results here as JSON")
    p.add_argument("--measure", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.input_size)))
        return 0
    folders = [Path(args.folder)] if args.folder else [
        generate(Path(args.work) / f"jpegs-{n}", n) for n in map(int, args.counts.split(","))]
    results = []
    for folder in folders:
        r = run_measurement(folder, args.input_size)
        print(json.dumps(r))
        results.append(r)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
