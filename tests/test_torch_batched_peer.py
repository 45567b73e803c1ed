"""The batched PyTorch peer (benchmarks/torch_batched_peer.py: P members stacked and trained
together under torch.func.vmap) computes what the sequential PyTorch reference computes."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from benchmarks.torch_batched_peer import BatchedTorchPeer, MemberModeBatchNorm  # noqa: E402
from deft_jax.core.masks import mask_from_names  # noqa: E402
from test_torch_reference import MASKS, STEPS, tiny  # noqa: E402, F401  (the module's fixture)


def test_member_mode_batchnorm_is_batchnorm_in_train_or_eval_mode_per_member_under_vmap():
    """Two members of one vmapped BN: the first trains (batch statistics, running statistics
    updated as nn.BatchNorm2d's), the second is frozen (running statistics, kept)."""
    from torch.func import functional_call, stack_module_state, vmap

    torch.manual_seed(0)
    bn = torch.nn.BatchNorm2d(3, momentum=0.1)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    peer_bn = MemberModeBatchNorm(bn)
    params, buffers = stack_module_state([peer_bn, peer_bn])
    buffers["trains"] = torch.tensor([1.0, 0.0])
    x = torch.randn(5, 3, 4, 4) * 2 + 1

    def call(p, b, x):
        out = functional_call(peer_bn, (p, b), (x,))
        return out, peer_bn.new_running

    out, (mean, var) = vmap(call, in_dims=(0, 0, None))(params, buffers, x)
    frozen = torch.nn.functional.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False,
                                            0.0, bn.eps)
    np.testing.assert_allclose(out[1].detach().numpy(), frozen.detach().numpy(), atol=1e-5)
    assert torch.equal(mean[1], bn.running_mean) and torch.equal(var[1], bn.running_var)
    bn.train()
    trained = bn(x)
    np.testing.assert_allclose(out[0].detach().numpy(), trained.detach().numpy(), atol=1e-5)
    np.testing.assert_allclose(mean[0].numpy(), bn.running_mean.numpy(), atol=1e-6)
    np.testing.assert_allclose(var[0].numpy(), bn.running_var.numpy(), atol=1e-5)


def test_the_batched_peer_trains_each_member_to_the_sequential_reference_model(tiny):  # noqa: F811
    """The 3 masks of test_torch_reference (head only, one middle group, everything) trained
    as one population: per-step losses within 1e-5 and validation logits within 1e-4 of
    the sequential reference's (observed ~1e-6: float32 summation order), the same fitness,
    the same final weights and running statistics, frozen groups untouched."""
    cfg, spec, data, variables, twin, reference = tiny
    masks = [mask_from_names(names, spec.group_names) for names in MASKS]
    peer = BatchedTorchPeer(reference)
    params, buffers, losses = peer.fine_tune(masks)
    assert tuple(losses.shape) == (STEPS, len(masks))
    logits = peer.logits(params, buffers)
    initial = twin.model.state_dict()
    for i, mask in enumerate(masks):
        model, seq_losses = reference.fine_tune(mask)
        np.testing.assert_allclose(losses[:, i].numpy(), seq_losses, atol=1e-5)
        np.testing.assert_allclose(logits[i], reference.logits(model), atol=1e-4)
        for key, value in model.state_dict().items():
            if key.endswith("num_batches_tracked"):
                continue
            ours = (params[key] if key in params else buffers[key])[i]
            np.testing.assert_allclose(ours.numpy(), value.numpy(), atol=1e-4, err_msg=key)
            group = key.split(".")[0]
            if not mask[group]:
                assert torch.equal(ours, initial[key]), f"frozen {key} changed"
    fitness = peer.evaluate(masks)
    assert fitness == reference.evaluate(masks)
    assert fitness[-1] < fitness[0]  # training every group beats the head alone here: the models learn


def test_the_batched_peer_refuses_what_it_does_not_implement(tiny):  # noqa: F811
    cfg, spec, data, variables, twin, reference = tiny

    class Adam:
        optimizer = "adam"

    saved = reference.cfg
    reference.cfg = Adam
    try:
        with pytest.raises(ValueError, match="SGD only"):
            BatchedTorchPeer(reference)
    finally:
        reference.cfg = saved
