"""The inference engine: the only code in fastvits that knows about oneDNN, packed weights or memory layouts.

`optimize_for_inference(model)` returns an inference-only copy of a plain model (or of anything holding fastvits
layers, such as a detector): BatchNorm and layer scales folded, position encodings kept per input size, attention on
`F.scaled_dot_product_attention`, and on a CPU the convolutions and linears as fused oneDNN kernels. timm's
`reparameterize_model` gives the same result through the `fuse()` hooks of fastvits' stages and layers.
"""

from .engine import PRECISIONS, RUNTIMES, InferenceOnly, InferenceOptions, optimize_for_inference, optimize_module
from .fastervit import PackedConvBlock  # importing the family modules registers their conversions
from .layers import PackedMlp
from .litv2 import PackedConvFFN

__all__ = [
    "PRECISIONS",
    "RUNTIMES",
    "InferenceOnly",
    "InferenceOptions",
    "PackedConvBlock",
    "PackedConvFFN",
    "PackedMlp",
    "optimize_for_inference",
    "optimize_module",
]
