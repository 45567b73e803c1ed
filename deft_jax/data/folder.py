"""A folder of images -> a `Dataset`: layout (see `deft_jax.data.layout`), memory check,
parallel decoding with progress, uint8 samples at one size.

Options: `deft_jax.config.sources.FolderSource` (`path`; `label_regex`, `group_regex`;
`resize` for whole images; `image_size`, the size whole images or crops are resized to,
default the model's input size; `crop`, `crop_stride`, tiles at full resolution;
`max_images`, the first k images per class, per split folder), checked by the config.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path

import numpy as np

from deft_jax.config.sources import FolderSource
from deft_jax.data.dataset import Dataset, check_class_count, require_two_classes
from deft_jax.data.images import Sampling, crop_count, header_size, image_samples
from deft_jax.data.layout import FolderScan, compile_regex, regex_value, scan_folder
from deft_jax.errors import UserError
from deft_jax.runtime import host_memory

logger = logging.getLogger(__name__)

MEMORY_HEADROOM = 0.8  # share of the host's available memory the decoded images may take


def folder_sampling(source: FolderSource, input_size: int | None) -> Sampling:
    """How each image of a folder source becomes samples (also stored for predict)."""
    size = source.image_size
    if size is None and source.crop is None:
        size = input_size
    return Sampling(source.crop, source.crop_stride or source.crop, size, source.resize)


def _first_per_class(scan: FolderScan, k: int) -> list[int]:
    seen: dict[tuple, int] = {}
    keep = []
    for i, label in enumerate(scan.labels):
        key = (scan.splits[i] if scan.splits else None, label)
        if seen.get(key, 0) < k:
            seen[key] = seen.get(key, 0) + 1
            keep.append(i)
    return keep


def _groups(files: list[Path], rel: list[str], group_regex) -> list[str]:
    if group_regex is None:
        return rel
    regex = compile_regex(group_regex, "group_regex", "group")
    groups = [regex_value(regex, f.name, "group") for f in files]
    bad = [f for f, g in zip(files, groups) if g is None]
    if bad:
        raise UserError(f"{len(bad)} of {len(files)} file names do not match group_regex "
                        f"{group_regex!r}, e.g. '{bad[0].name}'")
    return groups


def _sample_counts(files, rel, sampling: Sampling, workers: int) -> tuple[list[int], tuple[int, int]]:
    """Samples per file and the (height, width) of every sample, from headers only when the
    size is not fixed in advance."""
    s = sampling
    if s.crop is None and s.size is not None:
        return [1] * len(files), (s.size, s.size)
    with ThreadPoolExecutor(workers) as pool:
        sizes = list(pool.map(header_size, files))
    if s.crop is None:  # the images' own size, which must be one size
        first = sizes[0]
        for r, wh in zip(rel, sizes):
            if wh != first:
                raise UserError(f"images have different sizes ('{rel[0]}' is {first[0]}x{first[1]}, "
                                f"'{r}' is {wh[0]}x{wh[1]}); set image_size to resize them")
        return [1] * len(files), (first[1], first[0])
    counts = []
    for r, (w, h) in zip(rel, sizes):
        n = crop_count(w, h, s.crop, s.crop_stride)
        if n == 0:
            raise UserError(f"crop {s.crop} is larger than image '{r}' ({w}x{h})")
        counts.append(n)
    side = s.size or s.crop
    return counts, (side, side)


def check_memory(n_samples: int, height: int, width: int, n_images: int) -> None:
    """UserError before decoding when the uint8 samples would not fit in memory."""
    need = n_samples * height * width * 3
    available = host_memory.available_bytes()
    if available is None or need <= MEMORY_HEADROOM * available:
        return
    what = f"{n_samples:,} samples" if n_samples != n_images else f"{n_images:,} images"
    raise UserError(f"the decoded images would need {need / 2**30:.1f} GiB ({what} at "
                    f"{width}x{height} px, uint8 RGB) but only {available / 2**30:.1f} GiB of "
                    f"memory is available; lower model.input_size or image_size, or set "
                    f"max_images")


class _Progress:
    """A progress bar on a terminal (stderr), else a log line every 10% once it is slow."""

    def __init__(self, total: int):
        self.total = total
        self.tty = sys.stderr.isatty()
        self.start = time.perf_counter()
        self.last_draw = 0.0
        self.next_step = 1

    def update(self, done: int) -> None:
        now = time.perf_counter()
        elapsed = now - self.start
        if self.tty and (now - self.last_draw > 0.2 or done == self.total):
            filled = int(30 * done / self.total)
            sys.stderr.write(f"\rdecoding images [{'#' * filled}{'.' * (30 - filled)}] "
                             f"{done}/{self.total} {elapsed:.0f} s")
            if done == self.total:
                sys.stderr.write("\n")
            sys.stderr.flush()
            self.last_draw = now
        elif not self.tty and elapsed > 5 \
                and done * 10 >= self.next_step * self.total and done < self.total:
            logger.info(f"decoding images: {done}/{self.total} ({elapsed:.0f} s)")
            self.next_step = done * 10 // self.total + 1


def decode_all(files, rel, sampling: Sampling, counts, shape,
               workers: int | None = None) -> np.ndarray:
    """All samples of all files into one preallocated uint8 array, decoded in threads
    (PIL releases the GIL while decoding and resizing)."""
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    images = np.empty((int(offsets[-1]), shape[0], shape[1], 3), dtype=np.uint8)

    def read(i: int) -> None:
        samples = image_samples(files[i], sampling, rel[i])
        images[offsets[i]:offsets[i + 1]] = np.stack(samples)

    workers = workers or max(1, min(8, os.cpu_count() or 1))
    progress = _Progress(len(files))
    chunk = 64
    with ThreadPoolExecutor(workers) as pool:
        pending = set()
        done = 0
        for start in range(0, len(files), chunk):
            pending.add(pool.submit(lambda a: [read(i) for i in range(a, min(a + chunk, len(files)))],
                                    start))
        while pending:
            finished, pending = wait(pending, timeout=0.2, return_when=FIRST_EXCEPTION)
            for f in finished:
                if f.exception() is not None:
                    for p in pending:
                        p.cancel()
                    raise f.exception()
                done += 1
            progress.update(min(len(files), done * chunk))
    return images


def load_folder(source: FolderSource, input_size: int | None = None) -> Dataset:
    root = Path(os.path.expanduser(source.path))
    if not root.exists():
        raise UserError(f"dataset path not found: {root}")
    if not root.is_dir():
        raise UserError(f"dataset path is not a directory: {root}")
    sampling = folder_sampling(source, input_size)
    max_images = source.max_images

    scan = scan_folder(root, source.label_regex)
    class_names = sorted(set(scan.labels))
    check_class_count(len(class_names), str(root))
    require_two_classes(np.array([class_names.index(n) for n in scan.labels], dtype=np.int64),
                        class_names, str(root))  # before any image is decoded
    keep = list(range(len(scan.files))) if max_images is None else _first_per_class(scan, max_images)
    files = [scan.files[i] for i in keep]
    class_index = {n: i for i, n in enumerate(class_names)}
    labels = np.array([class_index[scan.labels[i]] for i in keep], dtype=np.int32)
    rel = [f.relative_to(root).as_posix() for f in files]
    image_groups = _groups(files, rel, source.group_regex)

    workers = max(1, min(8, os.cpu_count() or 1))
    counts, (height, width) = _sample_counts(files, rel, sampling, workers)
    n_samples = int(sum(counts))
    check_memory(n_samples, height, width, len(files))
    t0 = time.perf_counter()
    images = decode_all(files, rel, sampling, counts, (height, width), workers)
    seconds = time.perf_counter() - t0

    labels = np.repeat(labels, counts).astype(np.int32)
    groups = np.repeat(np.array(image_groups), counts)
    predefined = None
    if scan.splits is not None:
        split_of = np.repeat(np.array([scan.splits[i] for i in keep]), counts)
        predefined = {s: np.flatnonzero(split_of == s).astype(np.int64)
                      for s in scan.split_folders if np.any(split_of == s)}

    desc = f"folder {root.name} ({_layout_words(scan)}): {n_samples} samples"
    if sampling.crop is not None:
        desc += f" ({len(files)} images cut into {sampling.crop} px crops)"
    desc += f", {len(class_names)} classes, {width}x{height} px"
    if sampling.crop is None and sampling.size is not None:
        desc += f" ({sampling.resize})"
    desc += f", {len(set(image_groups))} groups"
    if max_images is not None:
        desc += f" (first {max_images} images per class)"
    logger.info(f"data: {root}: {_layout_words(scan)}; decoded {len(files)} images in {seconds:.1f} s "
        f"({workers} threads), {images.nbytes / 2**20:.0f} MiB as uint8")
    if scan.skipped_line:
        logger.info(f"data: {scan.skipped_line}")
    for split, lacking in scan.missing.items():
        logger.warning(f"data: warning: the {split} folder '{scan.split_folders[split]}' has no images of "
            f"class(es) {', '.join(lacking)}")
    origin = {"layout": scan.layout, "split_folders": scan.split_folders,
              "classes_missing": scan.missing,
              "skipped": {"hidden": scan.skipped_hidden, "non_image": scan.skipped_other}}
    return Dataset(images, labels, groups, class_names, desc, predefined_splits=predefined,
                   origin=origin)


def _layout_words(scan: FolderScan) -> str:
    if scan.layout != "split folders":
        return scan.layout
    names = ", ".join(f"{f}/" if f == s else f"{f}/ as {s}" for s, f in scan.split_folders.items())
    return f"split folders {names}"
