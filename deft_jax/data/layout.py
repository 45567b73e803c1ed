"""Which files of an image folder are samples, their class labels, and their splits.

Two layouts are recognised (split folder names in any letter case):

- class folders: ``root/<class>/...`` (or, with `label_regex`, labels from file names
  anywhere under root); the splits are made later (stratified, grouped);
- split folders: ``root/<split>/<class>/...`` with split folders named train, val, valid,
  validation or test (any subset that includes train). Classes come from train; a class
  of train that one of the other splits lacks is reported, a class in val/test that train
  lacks is an error.

Hidden files and folders (names starting with '.', and ``__MACOSX``) and files that are not
images are skipped and counted.
"""

from __future__ import annotations

import dataclasses
import os
import re
import stat
from pathlib import Path

from deft_jax.data.images import IMAGE_EXTENSIONS, is_image_name
from deft_jax.errors import UserError

SPLIT_FOLDERS = {"train": "train", "val": "val", "valid": "val", "validation": "val",
                 "test": "test"}
SPLIT_ORDER = ("train", "val", "test")


@dataclasses.dataclass
class FolderScan:
    layout: str                     # "class folders" | "split folders" | "file names"
    files: list[Path]               # sorted within each split, splits in SPLIT_ORDER
    labels: list[str]               # class name per file
    splits: list[str] | None        # split per file (split layout), else None
    split_folders: dict[str, str]   # split -> folder name found (split layout)
    missing: dict[str, list[str]]   # split -> classes of train it has no images of
    skipped_hidden: int = 0
    skipped_other: int = 0          # files that are not images (by extension)

    @property
    def skipped_line(self) -> str | None:
        if not (self.skipped_hidden or self.skipped_other):
            return None
        return (f"skipped {self.skipped_hidden} hidden file(s)/folder(s) and "
                f"{self.skipped_other} non-image file(s)")


def is_hidden(name: str) -> bool:
    return name.startswith(".") or name == "__MACOSX"


def _subfolders(folder: Path) -> tuple[list[Path], int]:
    dirs, hidden = [], 0
    for p in folder.iterdir():
        if p.is_dir():
            if is_hidden(p.name):
                hidden += 1
            else:
                dirs.append(p)
    return sorted(dirs), hidden


def regular_file(path: Path) -> Path:
    """`path` when it is a regular file (or a link to one), from stat alone: a FIFO, socket
    or device named like an image is never opened (reading a FIFO waits forever)."""
    try:
        mode = path.stat().st_mode
    except OSError as err:  # a dangling link, no permission
        raise UserError(f"cannot read image {path}: {err.strerror}") from None
    if not stat.S_ISREG(mode):
        raise UserError(f"{path} is not a regular file (a FIFO, socket or device named like an "
                        "image); remove it or move it out of the dataset folder")
    return path


class _Lister:
    """Image files under folders, counting what it skips."""

    def __init__(self):
        self.hidden = 0
        self.other = 0

    def images(self, folder: Path) -> list[Path]:
        files = []
        for dirpath, dirnames, filenames in os.walk(folder):
            kept = [d for d in dirnames if not is_hidden(d)]
            self.hidden += len(dirnames) - len(kept)
            dirnames[:] = kept
            for fname in filenames:
                if is_hidden(fname):
                    self.hidden += 1
                elif is_image_name(fname):
                    files.append(regular_file(Path(dirpath) / fname))
                else:
                    self.other += 1
        return sorted(files)

    def loose_files(self, folder: Path) -> None:
        """Count the files directly in `folder` (outside class folders) as skipped."""
        for p in folder.iterdir():
            if p.is_file():
                if is_hidden(p.name):
                    self.hidden += 1
                else:
                    self.other += 1


def _no_images(root: Path) -> UserError:
    return UserError(f"no images found in {root} (extensions: {', '.join(IMAGE_EXTENSIONS)}, "
                     f"any letter case)")


def _class_folder_samples(folder: Path, lister: _Lister, where: str,
                          allow_empty: bool) -> tuple[list[Path], list[str]]:
    class_dirs, hidden = _subfolders(folder)
    lister.hidden += hidden
    lister.loose_files(folder)
    if not class_dirs:
        if lister.images(folder):
            raise UserError(f"no class sub-folders in {where}; put each class in its own "
                            f"sub-folder or set label_regex to read labels from file names")
        raise _no_images(folder)
    paths, names = [], []
    for d in class_dirs:
        files = lister.images(d)
        if not files and not allow_empty:
            raise UserError(f"class folder '{d.name}' in {where} has no images")
        paths += files
        names += [d.name] * len(files)
    return paths, names


def _regex_samples(folder: Path, regex: re.Pattern, pattern: str,
                   lister: _Lister) -> tuple[list[Path], list[str]]:
    files = lister.images(folder)
    if not files:
        raise _no_images(folder)
    names = [regex_value(regex, f.name, "label") for f in files]
    bad = [f for f, n in zip(files, names) if n is None]
    if bad:
        raise UserError(f"{len(bad)} of {len(files)} file names do not match label_regex "
                        f"{pattern!r}, e.g. '{bad[0].name}'")
    return files, names


def compile_regex(pattern: str, key: str, group_name: str) -> re.Pattern:
    try:
        regex = re.compile(pattern)
    except re.error as err:
        raise UserError(f"invalid {key} {pattern!r}: {err}") from None
    if regex.groups < 1:
        raise UserError(f"{key} {pattern!r} needs a capture group (e.g. '(?P<{group_name}>...)')")
    return regex


def regex_value(regex: re.Pattern, name: str, group_name: str) -> str | None:
    match = regex.search(name)
    if match is None:
        return None
    value = match.group(group_name) if group_name in regex.groupindex else match.group(1)
    return value if value else None


def _split_folders(root: Path) -> dict[str, Path]:
    """split -> folder for a split layout; {} for a class layout."""
    dirs, _ = _subfolders(root)
    named = {d: SPLIT_FOLDERS[d.name.lower()] for d in dirs if d.name.lower() in SPLIT_FOLDERS}
    if not named:
        return {}
    others = [d.name for d in dirs if d not in named]
    if others:
        raise UserError(f"{root} mixes split folders ({', '.join(d.name for d in named)}) with "
                        f"other folders ({', '.join(others[:5])}); use root/<split>/<class>/... "
                        f"or root/<class>/...")
    found: dict[str, Path] = {}
    for d, split in named.items():
        if split in found:
            raise UserError(f"{root} has two folders for the {split} split: "
                            f"'{found[split].name}' and '{d.name}'")
        found[split] = d
    if "train" not in found:
        raise UserError(f"{root} has split folders ({', '.join(d.name for d in named)}) but "
                        f"no train folder; the training images must be in root/train/<class>/")
    return {s: found[s] for s in SPLIT_ORDER if s in found}


def scan_folder(root: Path, label_regex: str | None) -> FolderScan:
    lister = _Lister()
    regex = None if label_regex is None else compile_regex(label_regex, "label_regex", "label")
    folders = _split_folders(root)
    if not folders:
        if regex is None:
            files, labels = _class_folder_samples(root, lister, str(root), allow_empty=False)
            layout = "class folders"
        else:
            files, labels = _regex_samples(root, regex, label_regex, lister)
            layout = "file names"
        return FolderScan(layout, files, labels, None, {}, {}, lister.hidden, lister.other)

    lister.loose_files(root)
    files, labels, splits = [], [], []
    per_split: dict[str, set[str]] = {}
    for split, folder in folders.items():
        where = f"{root.name}/{folder.name}"
        if regex is None:
            f, n = _class_folder_samples(folder, lister, where, allow_empty=split != "train")
        else:
            f, n = _regex_samples(folder, regex, label_regex, lister)
        files += f
        labels += n
        splits += [split] * len(f)
        per_split[split] = set(n)
    classes = per_split["train"]
    missing = {}
    for split, names in per_split.items():
        extra = sorted(names - classes)
        if extra:
            raise UserError(f"class '{extra[0]}' has images in {root.name}/{folders[split].name} "
                            f"but none in {root.name}/{folders['train'].name}; every class "
                            f"needs training images")
        lacking = sorted(classes - names)
        if lacking:
            missing[split] = lacking
    return FolderScan("split folders", files, labels, splits,
                      {s: f.name for s, f in folders.items()}, missing,
                      lister.hidden, lister.other)


def image_files(folder: Path) -> list[Path]:
    """Every image file under `folder`, recursively and sorted, with the loader's rules:
    its image file types, hidden files and folders skipped."""
    return _Lister().images(Path(folder))


def folder_label(relative: Path, class_names) -> str | None:
    """The class of an image at `relative` (to a folder given to predict) by the layouts:
    its first folder (``<class>/...``) or, under a split folder, its second
    (``<split>/<class>/...``), if that is one of `class_names`; else None."""
    folders = Path(relative).parts[:-1]
    if folders and folders[0] in class_names:
        return folders[0]
    if len(folders) >= 2 and folders[0].lower() in SPLIT_FOLDERS and folders[1] in class_names:
        return folders[1]
    return None
