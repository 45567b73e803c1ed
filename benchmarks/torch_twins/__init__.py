"""PyTorch twins of deft_jax's models (torchvision/timm key names for the ImageNet
backbones), used by the PyTorch side of the benchmarks and by the tests that check weight
conversion and numerical agreement. They need torch, which the installed package does not."""
