"""Write tests/manifests/<arch>.json: (key, shape) of the real torchvision / timm state dicts.

Run where torchvision and timm import (any machine with matching torch/torchvision wheels;
no weights are downloaded: every model is built with pretrained=False / weights=None):

    python tests/manifests/generate_manifests.py

Where they do not import (this project's CPU torch has no matching torchvision build), the
same manifests can be produced from the libraries' published Python source, executed with
torch, by pointing at unpacked sources; C++-backed parts of torchvision that model
construction never touches are replaced by inert stubs:

    pip download torchvision --no-deps -d /tmp/tv && unzip -q /tmp/tv/*.whl -d /tmp/tv/src
    git clone --depth 1 https://github.com/huggingface/pytorch-image-models /tmp/timm
    python tests/manifests/generate_manifests.py --torchvision-source /tmp/tv/src \\
        --timm-source /tmp/timm

Each file records which of the two produced it in its "generated_by" field.
"""

from __future__ import annotations

import argparse
import importlib.abc
import importlib.machinery
import importlib.util
import json
import sys
import types
from pathlib import Path

HERE = Path(__file__).resolve().parent
# manifest name -> (library, constructor name)
ARCHITECTURES = {
    "resnet18_torchvision": ("torchvision", "resnet18"),
    "resnet34_torchvision": ("torchvision", "resnet34"),
    "resnet50_torchvision": ("torchvision", "resnet50"),
    "resnet18_timm": ("timm", "resnet18"),
    "resnet50_timm": ("timm", "resnet50"),
    "vgg16_torchvision": ("torchvision", "vgg16"),
    "vgg16_bn_torchvision": ("torchvision", "vgg16_bn"),
    "mobilenet_v2_torchvision": ("torchvision", "mobilenet_v2"),
    "efficientnet_b0_timm": ("timm", "efficientnet_b0"),
    "efficientnet_b0_torchvision": ("torchvision", "efficientnet_b0"),
    "convnext_tiny_timm": ("timm", "convnext_tiny"),
    "convnext_tiny_torchvision": ("torchvision", "convnext_tiny"),
    **{f"efficientnet_lite{v}": ("efficientnet_lite_pytorch", f"efficientnet-lite{v}")
       for v in range(5)},
}
# torchvision modules executed from source; every other torchvision module is a stub
TORCHVISION_REAL = {
    "torchvision.models._api", "torchvision.models._utils", "torchvision.models._meta",
    "torchvision.models.resnet", "torchvision.models.vgg", "torchvision.models.mobilenetv2",
    "torchvision.models.efficientnet", "torchvision.models.convnext",
    "torchvision.ops.misc", "torchvision.ops.stochastic_depth", "torchvision._utils",
}


class _StubMeta(type):
    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _stub_class(name)


def _stub_class(name: str):
    def call(self, *args, **kwargs):  # used as a decorator: hand the function back
        return args[0] if len(args) == 1 and callable(args[0]) and not kwargs else self
    return _StubMeta(name, (), {"__init__": lambda self, *a, **k: None, "__call__": call})


class _StubModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        value = _stub_class(name)
        setattr(self, name, value)
        return value


class _SourceFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """torchvision.* from `root`: the modules in TORCHVISION_REAL run from source, packages
    are empty namespaces over the source folders, anything else is an inert stub."""

    def __init__(self, root: Path):
        self.root = root

    def find_spec(self, fullname, path, target=None):
        if fullname != "torchvision" and not fullname.startswith("torchvision."):
            return None
        file = self.root.joinpath(*fullname.split(".")).with_suffix(".py")
        if fullname in TORCHVISION_REAL and file.is_file():
            return importlib.util.spec_from_file_location(fullname, file)
        spec = importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        spec.submodule_search_locations = [str(self.root.joinpath(*fullname.split(".")))]
        return spec

    def create_module(self, spec):
        return _StubModule(spec.name)

    def exec_module(self, module):
        pass


def _package_version(name: str) -> str:
    from importlib.metadata import version
    return version(name)


def _to_json(data: dict) -> str:
    """One line per tensor, so diffs between library versions read well."""
    head = {k: v for k, v in data.items() if k != "keys"}
    lines = [json.dumps(entry) for entry in data["keys"]]
    text = json.dumps(head, indent=1)[:-2] + ',\n "keys": [\n  ' + ",\n  ".join(lines) + "\n ]\n}\n"
    json.loads(text)
    return text


def _state_dict_shapes(model) -> list[list]:
    return [[key, list(value.shape)] for key, value in model.state_dict().items()]


def generate(torchvision_source: Path | None, timm_source: Path | None, out: Path) -> None:
    import torch

    if torchvision_source is not None:
        sys.meta_path.insert(0, _SourceFinder(torchvision_source))
    if timm_source is not None:
        sys.path.insert(0, str(timm_source))
    libraries = {}
    if torchvision_source is not None:
        libraries["torchvision"] = {name: importlib.import_module(f"torchvision.models.{module}")
                                    for name, module in (("resnet", "resnet"), ("vgg", "vgg"),
                                                         ("mobilenet_v2", "mobilenetv2"),
                                                         ("efficientnet", "efficientnet"),
                                                         ("convnext", "convnext"))}
    else:
        import torchvision.models
        libraries["torchvision"] = {"all": torchvision.models}
    import timm

    out.mkdir(parents=True, exist_ok=True)
    tv_version = "?"
    if torchvision_source is not None:
        version_file = torchvision_source / "torchvision" / "version.py"
        if version_file.is_file():  # first line: __version__ = '...'
            first = version_file.read_text().splitlines()[0]
            tv_version = first.split("=", 1)[1].strip().strip("'\"") if "=" in first else "?"
    else:
        tv_version = __import__("torchvision").__version__
    torch.manual_seed(0)
    for manifest, (library, constructor) in ARCHITECTURES.items():
        if library == "timm":
            model = timm.create_model(constructor, pretrained=False)
            how = "timm source" if timm_source is not None else "timm"
            call = f"timm.create_model({constructor!r}, pretrained=False)"
            version = getattr(timm, "__version__", "?")
        elif library == "efficientnet_lite_pytorch":
            from efficientnet_lite_pytorch import EfficientNet
            model = EfficientNet.from_name(constructor)
            how, version = "efficientnet_lite_pytorch", _package_version("efficientnet-lite-pytorch")
            call = f"EfficientNet.from_name({constructor!r})"
        else:
            modules = libraries["torchvision"]
            build = next(getattr(m, constructor) for m in modules.values() if hasattr(m, constructor))
            model = build(weights=None)
            how = "torchvision source" if torchvision_source is not None else "torchvision"
            version = tv_version
            call = f"torchvision.models.{constructor}(weights=None)"
        data = {
            "generated_by": f"{how} {version}: {call}, torch {torch.__version__}, "
                            f"tests/manifests/generate_manifests.py",
            "architecture": constructor,
            "library": library,
            "keys": _state_dict_shapes(model),
        }
        (out / f"{manifest}.json").write_text(_to_json(data))
        print(f"{manifest}: {len(data['keys'])} tensors")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--torchvision-source", type=Path, help="unpacked torchvision wheel/repo")
    parser.add_argument("--timm-source", type=Path, help="pytorch-image-models checkout")
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()
    generate(args.torchvision_source, args.timm_source, args.out)


if __name__ == "__main__":
    main()
