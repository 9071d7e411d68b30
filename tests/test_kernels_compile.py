"""torch.compile(fullgraph=True) through the custom ops on CPU: no graph breaks, same output as eager.

A graph break would make fullgraph compilation raise, so passing means the ops (and the `auto` path
choice, traced as Python) stay inside one graph.
"""

import pytest
import torch
import torch.nn.functional as F

from wan_nvfp4 import kernels as K
from wan_nvfp4.kernels import ops
from wan_nvfp4.kernels.options import KernelOptions
from wan_nvfp4.tests import kernel_cases as C


class TinyBlock(torch.nn.Module):
    """NVFP4 -> GELU -> FP8 -> float head, like a WAN FFN with a kept high-precision layer."""

    def __init__(self, options: KernelOptions):
        super().__init__()
        self.options = options
        self.up = C.make_nvfp4(96, 64, "high_first", "swizzled", seed=1)
        self.down = C.make_fp8(64, 96, "row", torch.float8_e4m3fn, seed=2)
        self.head = torch.nn.Parameter(C.random_weight(32, 64, seed=3), requires_grad=False)
        self.register_buffer("up_bias", torch.randn(96, generator=C.seeded(4)))

    def forward(self, x):
        h = F.gelu(ops.linear(x, self.up, self.up_bias, options=self.options), approximate="tanh")
        h = ops.linear(h, self.down, options=self.options) + x
        w_head = ops.dequantize(self.up, torch.float32)[:32, :64] + self.head  # the dequantize op too
        return ops.linear(h, w_head, options=self.options)


def reference_forward(model: TinyBlock, x: torch.Tensor) -> torch.Tensor:
    """The same block from the exact fp32 reference functions (no custom ops)."""
    h = F.gelu(K.linear_reference(x, model.up, model.up_bias), approximate="tanh")
    h = K.linear_reference(h, model.down) + x
    return F.linear(h, K.dequantize(model.up)[:32, :64] + model.head)


@pytest.mark.slow
@pytest.mark.parametrize("path", ["auto", "reference"])
def test_compile_fullgraph_matches_eager_and_reference(path):
    torch._dynamo.reset()
    model = TinyBlock(KernelOptions(path=path)).eval()
    x = torch.randn(2, 7, 64, generator=C.seeded(5))
    with torch.no_grad():
        eager = model(x)
        compiled = torch.compile(model, fullgraph=True)(x)
        reference = reference_forward(model, x)
    assert compiled.shape == (2, 7, 32)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(compiled, reference, rtol=1e-4, atol=1e-4)
