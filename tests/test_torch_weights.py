"""The torch-free checkpoint reader agrees with torch.load, tensor for tensor."""

from __future__ import annotations

import pickle
import zipfile
from collections import OrderedDict

import numpy as np
import pytest

from conftest import CIFAR_RESNET_WEIGHTS, lite0_weights_path, needs_cifar_resnet, needs_lite0
from deft_jax.errors import UserError
from deft_jax.models.torch_weights import read_torch_state_dict

CIFAR_FILES = sorted(CIFAR_RESNET_WEIGHTS.glob("*.th")) if CIFAR_RESNET_WEIGHTS.is_dir() else []


def _torch_reference(path):
    """torch.load's tensors, with the reader's conventions ('state_dict', 'module.')."""
    torch = pytest.importorskip("torch")
    obj = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    return {k.removeprefix("module."): v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _assert_same(ours, reference):
    assert list(ours) == list(reference)
    for key, tensor in reference.items():
        expected = tensor.numpy()
        assert ours[key].dtype == expected.dtype, key
        assert ours[key].shape == expected.shape, key
        assert np.array_equal(ours[key], expected), key


@needs_cifar_resnet
@pytest.mark.parametrize("path", CIFAR_FILES, ids=lambda p: p.name)
def test_legacy_cifar_resnet_checkpoints_read_exactly_as_torch_load_does(path):
    ours = read_torch_state_dict(path)
    assert "conv1.weight" in ours and not any(k.startswith("module.") for k in ours)
    assert "best_prec1" not in ours
    _assert_same(ours, _torch_reference(path))


@needs_lite0
def test_the_lite0_checkpoint_reads_exactly_as_torch_load_does():
    path = lite0_weights_path()
    ours = read_torch_state_dict(path)
    assert any(v.dtype == np.int64 for v in ours.values())  # num_batches_tracked
    _assert_same(ours, _torch_reference(path))


def test_zip_format_with_views_strides_and_many_dtypes_reads_exactly(tmp_path):
    torch = pytest.importorskip("torch")
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    state = OrderedDict(
        f32=torch.randn(3, 4),
        f64=torch.randn(2, 3, dtype=torch.float64),
        f16=torch.randn(5).half(),
        i64=torch.arange(7),
        i32=torch.arange(-3, 3, dtype=torch.int32),
        u8=torch.arange(200, 210, dtype=torch.uint8),
        flag=torch.tensor([True, False, True]),
        scalar=torch.tensor(3.5),
        empty=torch.zeros(0, 3),
        transposed=base.t(),  # non-contiguous strides
        sliced=base[1:3, 2:5],  # storage offset + strides into a shared storage
        shares=base,
        param=torch.nn.Parameter(torch.ones(2, 2)),
    )
    path = tmp_path / "state.pt"
    torch.save({"state_dict": OrderedDict((f"module.{k}", v) for k, v in state.items()),
                "epoch": 3, "note": "extra entries are dropped"}, path)
    assert zipfile.is_zipfile(path)
    ours = read_torch_state_dict(path)
    _assert_same(ours, {k: v.detach() for k, v in state.items()})


def test_legacy_format_written_by_current_torch_reads_exactly(tmp_path):
    torch = pytest.importorskip("torch")
    base = torch.randn(5, 6, dtype=torch.float64)
    state = {"w": torch.randn(4, 3), "t": base.t(), "s": base[2:, 1::2], "n": torch.tensor(7)}
    path = tmp_path / "legacy.pt"
    torch.save(state, path, _use_new_zipfile_serialization=False)
    assert not zipfile.is_zipfile(path)
    _assert_same(read_torch_state_dict(path), state)


def test_a_garbage_file_raises_a_one_line_user_error_naming_the_file(tmp_path):
    path = tmp_path / "garbage.pth"
    path.write_bytes(b"this is not a checkpoint\n" * 10)
    with pytest.raises(UserError, match="garbage.pth") as err:
        read_torch_state_dict(path)
    assert "\n" not in str(err.value)


def test_a_plain_pickle_that_is_not_torch_save_output_raises_user_error(tmp_path):
    path = tmp_path / "plain.pkl"
    path.write_bytes(pickle.dumps({"a": [1, 2, 3]}))
    with pytest.raises(UserError, match="plain.pkl"):
        read_torch_state_dict(path)


def test_a_missing_file_raises_user_error(tmp_path):
    with pytest.raises(UserError, match="nope.th"):
        read_torch_state_dict(tmp_path / "nope.th")


def test_a_truncated_checkpoint_raises_user_error(tmp_path):
    if not CIFAR_FILES:
        pytest.skip("shared CIFAR ResNet weights not found")
    path = tmp_path / "truncated.th"
    path.write_bytes(CIFAR_FILES[0].read_bytes()[:-1000])
    with pytest.raises(UserError, match="truncated.th"):
        read_torch_state_dict(path)


def test_unpickling_never_calls_arbitrary_callables(tmp_path, capsys):
    class Evil:
        def __reduce__(self):
            return (print, ("side effect",))

    path = tmp_path / "evil.pkl"
    # A zip archive shaped like torch.save output, whose pickle calls builtins.print.
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("evil/data.pkl", pickle.dumps({"x": Evil()}, protocol=2))
    with pytest.raises(UserError, match="no tensors"):
        read_torch_state_dict(path)
    assert "side effect" not in capsys.readouterr().out
