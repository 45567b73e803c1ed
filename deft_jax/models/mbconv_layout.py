"""The PyTorch state-dict layout of an MBConv-family network (MobileNetV2, EfficientNet-B0,
EfficientNet-Lite): stem conv + BN, MBConv blocks, final conv + BN, linear classifier.

The Flax side is fixed by `ConvBnAct` / `MBConv` (stages `stem`, `block...`, `final_conv`,
`head`); only the torch key names differ between the torchvision, timm and
`efficientnet_lite_pytorch` namings. Each naming describes its blocks with `MBConvKeys`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from deft_jax.models.mbconv import MBCONV_BN_NAMES
from deft_jax.models.weight_layout import Entry, LayoutBuilder


@dataclasses.dataclass(frozen=True)
class MBConvKeys:
    """The torch keys of one MBConv block, stage `stage` on the Flax side.

    Each part is its module names below `prefix`: `(conv, bn)` for the expand, depthwise
    and project convolutions (`expand` None: the block has no expand conv), `(reduce,
    expand)` for the squeeze-excitation convs (`se` None: no squeeze-excitation).
    """

    stage: str
    prefix: str
    depthwise: tuple[str, str]
    project: tuple[str, str]
    expand: tuple[str, str] | None = None
    se: tuple[str, str] | None = None


def mbconv_layout(stem: tuple[str, str], blocks: Iterable[MBConvKeys], final: tuple[str, str],
                  classifier: str, bn_names: tuple[str, str, str] = MBCONV_BN_NAMES
                  ) -> list[Entry]:
    """Entries in the order stem, blocks (expand, depthwise, SE, project), final conv, head.

    stem / final: the (conv, bn) keys of the stem and final `ConvBnAct`; classifier: the
    linear head's key; bn_names: the `MBConv.bn_names` of the Flax blocks."""
    b = LayoutBuilder()
    b.conv(stem[0], ("stem", "conv"))
    b.bn(stem[1], ("stem", "bn"))
    expand_bn, depthwise_bn, project_bn = bn_names
    for block in blocks:
        parts = (("expand_conv", expand_bn, block.expand),
                 ("depthwise_conv", depthwise_bn, block.depthwise))
        for conv_name, bn_name, keys in parts:
            if keys is not None:
                b.conv(f"{block.prefix}.{keys[0]}", (block.stage, conv_name))
                b.bn(f"{block.prefix}.{keys[1]}", (block.stage, bn_name))
        if block.se is not None:
            b.conv(f"{block.prefix}.{block.se[0]}", (block.stage, "se_reduce"), bias=True)
            b.conv(f"{block.prefix}.{block.se[1]}", (block.stage, "se_expand"), bias=True)
        b.conv(f"{block.prefix}.{block.project[0]}", (block.stage, "project_conv"))
        b.bn(f"{block.prefix}.{block.project[1]}", (block.stage, project_bn))
    b.conv(final[0], ("final_conv", "conv"))
    b.bn(final[1], ("final_conv", "bn"))
    b.dense(classifier, ("head", "fc"), head=True)
    return b.entries
