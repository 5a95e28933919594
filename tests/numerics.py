"""Checks of algebraic identities (two computations of one quantity), in float64.

In float32 the two sides of an identity go through different kernels (a grouped convolution
against two plain ones, one batch of 16 against two of 8), and how far apart they land
depends on which kernels the CPU picks: oneDNN's AVX-512 float32 grouped-convolution
backward is about 1e-2 relative off on some CPUs where the AVX2 kernels agree to 1e-5
(issue 12). In float64 CPU convolutions leave oneDNN (it has no float64 kernels) and every
kernel rounds at 2^-53 = 1.1e-16, so an identity holds to rounding on every machine.

``REL64`` is the tolerance, relative to the largest entry of the compared quantity (or of a
given ``scale``, e.g. the largest gradient of the whole model, for tensors whose true value
is 0 and whose computed one is rounding noise): 1e-10 leaves about 1e6 float64 roundings of
room for sums over the ~1e5 terms of a ResNet's forward and backward, and stays 1e5 times
below float32's ~1e-5, so a float32 step or a real discrepancy (an O(1) relative error)
cannot pass. Measured on this suite's models: the fused and separate passes agree exactly
(0 difference) in float64.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

REL64 = 1e-10


def max_abs(tensors: Iterable[torch.Tensor]) -> float:
    return max(float(t.detach().abs().max()) for t in tensors)


def assert_close64(
    actual: torch.Tensor, expected: torch.Tensor, scale: float | None = None, what: str = ""
) -> None:
    """``|actual - expected| <= REL64 * scale`` entry by entry, both float64; ``scale``
    defaults to the largest magnitude on either side (1 when both are all zero)."""
    assert actual.dtype == torch.float64 and expected.dtype == torch.float64, (
        f"{what}: an identity is checked in float64, got {actual.dtype} and {expected.dtype}"
    )
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    if not actual.numel():
        return
    if scale is None:
        scale = max_abs([actual, expected]) or 1.0
    err = float((actual.detach() - expected.detach()).abs().max())
    assert err <= REL64 * scale, f"{what}: max |difference| {err:.3e} > {REL64:g} x {scale:.3e}"


# --- float32 checks kept on purpose -------------------------------------------------------
# Image operations run in float32 (that is what the suite computes), and their parity with
# torchvision is checked where they run. The tolerance is not a number one machine happened
# to give: it is measured where the test runs, as the rounding of torchvision's own float32
# implementation of the op, max |reference(float32 input) - reference(float64 input)|, on
# this machine's kernels. Ours is compared with the float64 reference and may be FACTOR32
# times that far: the two implementations take a similar number of rounding steps in a
# different order (ratios of 0.8 to 2.9 measured over the colour ops, resizes and rotation
# on the development machine), and 8 leaves room for the order. FLOOR32 (16 float32
# roundings of the output's largest value) covers ops whose float32 reference happens to be
# exact at the tested points.

U32 = 2.0**-24  # float32 unit roundoff
FACTOR32 = 8.0
FLOOR32 = 16 * U32


def _as64(x):
    if isinstance(x, torch.Tensor) and x.is_floating_point():
        return x.double()
    if isinstance(x, (list, tuple)):
        return type(x)(_as64(v) for v in x)
    return x


def assert_float32_close(ours: torch.Tensor, reference, *inputs, what: str = "") -> None:
    """``ours`` (float32) against ``reference(*inputs)`` evaluated in float64, within
    FACTOR32 x the measured float32 rounding of ``reference`` (at least FLOOR32 x the
    largest output value); ``inputs`` may be tensors or lists of them."""
    ref32 = reference(*inputs)
    ref64 = reference(*_as64(inputs))
    assert ref64.dtype == torch.float64, f"{what}: the reference did not compute in float64"
    size = max(float(ref64.abs().max()), 1.0)
    rounding = float((ref32.double() - ref64).abs().max())
    tol = max(FACTOR32 * rounding, FLOOR32 * size)
    err = float((ours.double() - ref64).abs().max())
    assert err <= tol, (
        f"{what}: max |ours - float64 reference| {err:.3e} > {tol:.3e} "
        f"({FACTOR32:g} x the reference's own float32 rounding {rounding:.3e}, "
        f"at least {FLOOR32 * size:.3e})"
    )
