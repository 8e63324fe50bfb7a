"""The spatial transformer: grid generators, the sampler (paper eqs. 5-7), loc nets and the module."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from stn.runtime import ALIGN_CORNERS
from stn.transformers import (
    TRANSFORMS,
    AffineTransform,
    AttentionTransform,
    ConvLocNet,
    FCLocNet,
    ProjectiveTransform,
    SpatialTransformer,
    TPSTransform,
    Transform,
    make_transform,
    sample,
    warp,
)

FAMILIES = [*TRANSFORMS, "attention_fixed"]


def build(name: str) -> Transform:
    return AttentionTransform(fixed_scale=0.5) if name == "attention_fixed" else make_transform(name)


def theta_of_affine(transform: Transform, matrix: torch.Tensor) -> torch.Tensor:
    """The theta [1, n_params] with which `transform` realises the affine map `matrix` [2, 3]."""
    if isinstance(transform, AttentionTransform):
        scale, tx, ty = matrix[0, 0], matrix[0, 2], matrix[1, 2]  # matrix must be [[s, 0, tx], [0, s, ty]]
        params = [tx, ty] if transform.fixed_scale is not None else [scale, tx, ty]
        return torch.stack(params)[None]
    if isinstance(transform, ProjectiveTransform):
        return torch.cat([matrix.reshape(-1), matrix.new_zeros(2)])[None]
    if isinstance(transform, TPSTransform):
        control = transform.control_points.to(matrix)
        return (control @ matrix[:, :2].T + matrix[:, 2]).reshape(1, -1)
    return matrix.reshape(1, 6)


def random_theta(name: str, batch: int, generator: torch.Generator, spread: float = 0.15) -> torch.Tensor:
    """Random float64 theta near the identity (small perspective terms keep the denominator near 1)."""
    transform = build(name)
    noise = spread * torch.randn(batch, transform.n_params, generator=generator, dtype=torch.float64)
    return transform.identity().double() + noise


# ---------------------------------------------------------------- identity


@pytest.mark.parametrize("name", list(TRANSFORMS))
@pytest.mark.parametrize("size", [(1, 5), (5, 7), (13, 31), (28, 28)])
@pytest.mark.parametrize("channels", [1, 3])
def test_identity_theta_reproduces_input(name: str, size: tuple[int, int], channels: int) -> None:
    transform = make_transform(name)
    images = torch.rand(2, channels, *size, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    theta = transform.identity().expand(2, -1)
    # float64: the identity grid hits every pixel centre, so the output is the input up to double round-off.
    # (identity() is float32; the TPS control points +-1/3 need their float64 values here.)
    theta64 = transform.control_points.reshape(1, -1) if name == "tps" else theta.double()
    torch.testing.assert_close(warp(images, transform, theta64.expand(2, -1)), images, rtol=0, atol=1e-12)
    # float32: grid_sample rounds the pixel position (x + 1)(W - 1)/2 in float32, a few ulps of the side length.
    images = images.float()
    tolerance = 2 * torch.finfo(torch.float32).eps * max(size)
    torch.testing.assert_close(warp(images, transform, theta), images, rtol=0, atol=tolerance)


def test_identity_grids_of_all_families_are_identical() -> None:
    reference = AffineTransform().grid(AffineTransform().identity()[None], (9, 11))
    for name in TRANSFORMS:
        transform = make_transform(name)
        assert torch.equal(transform.grid(transform.identity()[None], (9, 11)), reference), name


@pytest.mark.parametrize(
    ("loc_net", "size", "channels"),
    [
        (lambda c, s: ConvLocNet(c, s), (28, 28), 1),
        (lambda c, s: ConvLocNet(c, s, downsample_op="avg"), (42, 60), 3),
        (lambda c, s: FCLocNet(c * s[0] * s[1]), (20, 24), 2),
    ],
)
@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_spatial_transformer_starts_at_identity(loc_net, size: tuple[int, int], channels: int, name: str) -> None:
    torch.manual_seed(0)
    module = SpatialTransformer(loc_net(channels, size), make_transform(name))
    images = torch.rand(3, channels, *size)
    out, theta = module(images, return_theta=True)
    assert torch.equal(theta, module.transform.identity().expand(3, -1))
    torch.testing.assert_close(out, images, rtol=0, atol=2 * torch.finfo(torch.float32).eps * max(size))


# ---------------------------------------------------------------- geometry


@pytest.mark.filterwarnings("ignore:Since version 1.3.0, affine_grid behavior has changed for unit-size grids")
def test_affine_grid_equals_torch_affine_grid() -> None:
    theta = torch.randn(4, 6, generator=torch.Generator().manual_seed(1))
    for size in [(5, 7), (1, 4), (16, 9)]:
        expected = F.affine_grid(theta.view(-1, 2, 3), [4, 1, *size], align_corners=ALIGN_CORNERS)
        torch.testing.assert_close(AffineTransform().grid(theta, size), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ["attention", "attention_fixed", "projective", "tps"])
def test_family_realising_an_affine_map_equals_the_affine_grid(name: str) -> None:
    """Attention, projective with zero perspective terms and a TPS whose control points moved by an affine map."""
    generator = torch.Generator().manual_seed(2)
    if name.startswith("attention"):
        scale = 0.5 if name == "attention_fixed" else 0.8
        tx, ty = torch.randn(2, generator=generator, dtype=torch.float64).tolist()
        matrix = torch.tensor([[scale, 0.0, tx], [0.0, scale, ty]], dtype=torch.float64)
    else:
        matrix = torch.eye(2, 3, dtype=torch.float64) + 0.3 * torch.randn(
            2, 3, generator=generator, dtype=torch.float64
        )
    transform = build(name)
    for size in [(6, 9), (11, 5)]:
        expected = AffineTransform().grid(matrix.reshape(1, 6), size)
        grid = transform.grid(theta_of_affine(transform, matrix), size)
        torch.testing.assert_close(grid, expected, rtol=0, atol=1e-12)


def marked_image(size: tuple[int, int], row: int, col: int) -> torch.Tensor:
    image = torch.zeros(1, 1, *size)
    image[0, 0, row, col] = 1.0
    return image


@pytest.mark.parametrize("name", ["affine", "projective", "tps"])  # attention cannot rotate
def test_rotation_and_translation_move_a_marked_pixel_where_geometry_says(name: str) -> None:
    transform = make_transform(name)
    # 9x9 image: pixel (row r, col c) sits at x = c/4 - 1, y = r/4 - 1. theta maps target to source by
    # x_s = -y_t + 0.5 (a 90 degree rotation plus a 2 px shift), y_s = x_t, i.e. source col = 10 - r, source row = c.
    # The source pixel (row 2, col 6) therefore lands on the target pixel (row 4, col 2).
    matrix = torch.tensor([[0.0, -1.0, 0.5], [1.0, 0.0, 0.0]])
    out = warp(marked_image((9, 9), 2, 6), transform, theta_of_affine(transform, matrix))
    torch.testing.assert_close(out, marked_image((9, 9), 4, 2), rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_translation_on_a_non_square_image(name: str) -> None:
    transform = make_transform(name)
    # Move the content 3 px right and 2 px up on a 7x11 image: source = target - shift, and one pixel is
    # 2/(W-1) = 0.2 wide in x and 2/(H-1) = 1/3 tall in y.
    matrix = torch.tensor([[1.0, 0.0, -3 * 0.2], [0.0, 1.0, 2 / 3]])
    out = warp(marked_image((7, 11), 4, 5), transform, theta_of_affine(transform, matrix))
    torch.testing.assert_close(out, marked_image((7, 11), 2, 8), rtol=0, atol=1e-5)


def test_attention_crop_samples_the_expected_window() -> None:
    # Scale 0.5 centred at the top-left quadrant's centre on a 9x9 image: the 5x5 output is rows/cols 0..4.
    image = torch.arange(81.0).view(1, 1, 9, 9)
    out = warp(image, AttentionTransform(fixed_scale=0.5), torch.tensor([[-0.5, -0.5]]), out_size=(5, 5))
    torch.testing.assert_close(out, image[..., :5, :5], rtol=0, atol=1e-4)


@pytest.mark.parametrize("grid_size", [2, 3, 5])
def test_tps_passes_through_its_control_points(grid_size: int) -> None:
    transform = TPSTransform(grid_size)
    theta = torch.randn(2, transform.n_params, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    # With 2(n-1)+1 pixels per side, the output pixels at even indices are exactly the control points.
    side = 2 * (grid_size - 1) + 1
    grid = transform.grid(theta, (side, side))
    torch.testing.assert_close(grid[:, ::2, ::2].reshape(2, -1), theta, rtol=0, atol=1e-12)
    assert torch.equal(
        transform.grid(transform.identity()[None], (side, side))[0, ::2, ::2].reshape(-1), transform.identity()
    )


@pytest.mark.parametrize("grid_size", [1, 0, -3, 2.5])
def test_tps_rejects_fewer_than_two_control_points_per_side(grid_size) -> None:
    with pytest.raises(ValueError, match="grid_size"):
        TPSTransform(grid_size)


def test_warp_uses_each_sample_s_own_theta() -> None:
    generator = torch.Generator().manual_seed(4)
    images = torch.rand(5, 2, 12, 10, generator=generator)
    for name in FAMILIES:
        transform = build(name)
        theta = random_theta(name, 5, generator).float()
        batched = warp(images, transform, theta, out_size=(8, 9))
        one_by_one = torch.cat([warp(images[i : i + 1], transform, theta[i : i + 1], (8, 9)) for i in range(5)])
        torch.testing.assert_close(batched, one_by_one, rtol=0, atol=1e-6)


# ---------------------------------------------------------------- sampler vs the paper's equations


def bilinear_kernel(distance: torch.Tensor) -> torch.Tensor:
    return (1 - distance.abs()).clamp(min=0)


def paper_sampler(images: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Eq. (5): V_i^c = sum_n sum_m U_nm^c max(0, 1 - |x_i - m|) max(0, 1 - |y_i - n|), pixel coordinates."""
    _, _, height, width = images.shape
    x = (grid[..., 0] + 1) * (width - 1) / 2
    y = (grid[..., 1] + 1) * (height - 1) / 2
    out = torch.zeros(*images.shape[:2], *grid.shape[1:3], dtype=images.dtype)
    for n in range(height):
        for m in range(width):
            out += images[:, :, n, m, None, None] * (bilinear_kernel(x - m) * bilinear_kernel(y - n))[:, None]
    return out


def paper_gradients(images: torch.Tensor, grid: torch.Tensor, upstream: torch.Tensor):
    """Eqs. (6)-(7), chained with upstream dL/dV: returns dL/dU and dL/d(grid) (normalised coordinates)."""
    _, _, height, width = images.shape
    x = (grid[..., 0] + 1) * (width - 1) / 2
    y = (grid[..., 1] + 1) * (height - 1) / 2
    grad_images = torch.zeros_like(images)
    grad_x = torch.zeros_like(x)
    grad_y = torch.zeros_like(y)
    for n in range(height):
        for m in range(width):
            wx, wy = bilinear_kernel(x - m), bilinear_kernel(y - n)
            # eq. (6): dV_i/dU_nm = max(0, 1 - |x_i - m|) max(0, 1 - |y_i - n|)
            grad_images[:, :, n, m] = (upstream * (wx * wy)[:, None]).sum(dim=(2, 3))
            # eq. (7): dV_i/dx_i = sum U_nm max(0, 1 - |y_i - n|) * {0 if |m - x_i| >= 1; 1 if m >= x_i; -1 else}
            slope_x = torch.where((m - x).abs() >= 1, 0.0, torch.where(m >= x, 1.0, -1.0))
            slope_y = torch.where((n - y).abs() >= 1, 0.0, torch.where(n >= y, 1.0, -1.0))
            weighted = (upstream * images[:, :, n, m, None, None]).sum(1)
            grad_x += weighted * wy * slope_x
            grad_y += weighted * wx * slope_y
    grad_grid = torch.stack([grad_x * (width - 1) / 2, grad_y * (height - 1) / 2], dim=-1)
    return grad_images, grad_grid


def test_sampler_matches_equations_5_to_7() -> None:
    assert ALIGN_CORNERS, "the reference below uses the align_corners=True pixel mapping x_pix = (x + 1)(W - 1)/2"
    generator = torch.Generator().manual_seed(5)
    images = torch.rand(2, 3, 4, 5, generator=generator, dtype=torch.float64, requires_grad=True)
    # Random coordinates reaching past the border (zero padding); never exactly on a pixel, where eq. (7) kinks.
    grid = (2.4 * torch.rand(2, 3, 6, 2, generator=generator, dtype=torch.float64) - 1.2).requires_grad_()
    upstream = torch.randn(2, 3, 3, 6, generator=generator, dtype=torch.float64)

    out = sample(images, grid)
    torch.testing.assert_close(out, paper_sampler(images.detach(), grid.detach()), rtol=0, atol=1e-12)

    out.backward(upstream)
    grad_images, grad_grid = paper_gradients(images.detach(), grid.detach(), upstream)
    torch.testing.assert_close(images.grad, grad_images, rtol=0, atol=1e-12)
    torch.testing.assert_close(grid.grad, grad_grid, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", FAMILIES)
def test_gradcheck_output_wrt_theta_and_input(name: str) -> None:
    generator = torch.Generator().manual_seed(6)
    transform = build(name)
    theta = random_theta(name, 2, generator).requires_grad_()
    images = torch.rand(2, 2, 5, 6, generator=generator, dtype=torch.float64, requires_grad=True)
    assert transform.grid(theta, (4, 5)).dtype == torch.float64  # float32 is a floor, not a cast-down
    assert torch.autograd.gradcheck(lambda t, x: warp(x, transform, t, (4, 5)), (theta, images))


# ---------------------------------------------------------------- robustness and dtypes


EXTREME_PROJECTIVE = [
    [1e6] * 8,
    [-1e6] * 8,
    [1e6, -1e6, 1e6, -1e6, 1e6, -1e6, 1e6, -1e6],
    [1e12, 0, 0, 0, 1e12, 0, -1e12, 1e12],
    [1e30, -1e30, 1e30, 1e30, 1e30, -1e30, 1e30, -1e30],
    [1, 0, 0, 0, 1, 0, 1, 0],  # d = x + 1: exactly 0 on the left column
    [1, 0, 0, 0, 1, 0, 0, -1],  # d = 1 - y: exactly 0 on the bottom row
    [1, 0, 0, 0, 1, 0, 0.5, 0.5],  # d = 0 along the anti-diagonal corner x + y = -2
    [0] * 8,
]


@pytest.mark.parametrize("params", EXTREME_PROJECTIVE)
def test_extreme_projective_parameters_give_finite_outputs_and_gradients(params: list[float]) -> None:
    transform = ProjectiveTransform()
    theta = torch.tensor([params], dtype=torch.float32, requires_grad=True)
    images = torch.rand(1, 2, 9, 9, generator=torch.Generator().manual_seed(7), requires_grad=True)
    grid = transform.grid(theta, (9, 9))
    assert grid.abs().max() <= transform.clamp
    out = sample(images, grid)
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    assert torch.isfinite(out).all()
    assert torch.isfinite(theta.grad).all()
    assert torch.isfinite(images.grad).all()


def test_projective_keeps_the_sign_of_a_small_denominator() -> None:
    # x' = 0.01 x / (h31 x + 1) at x = 1 (y = 0): d = -0.001 or +0.001, held at |d| = 0.01 with its sign.
    theta = torch.tensor([[0.01, 0, 0, 0, 1, 0, -1.001, 0], [0.01, 0, 0, 0, 1, 0, -0.999, 0]])
    grid = ProjectiveTransform(min_denominator=1e-2).grid(theta, (1, 3))  # x = -1, 0, 1 at y = 0
    torch.testing.assert_close(grid[:, 0, 2, 0], torch.tensor([-1.0, 1.0]))
    torch.testing.assert_close(grid[:, 0, 1, 0], torch.tensor([0.0, 0.0]))


def test_autocast_keeps_theta_grid_and_sampling_in_float32() -> None:
    torch.manual_seed(0)
    module = SpatialTransformer(ConvLocNet(1, (28, 28)), make_transform("tps"))
    images = torch.rand(4, 1, 28, 28)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert module.loc_net(images).dtype == torch.bfloat16  # autocast is really active on the loc net body
        out, theta = module(images, return_theta=True)
        grid = module.transform.grid(theta.bfloat16(), (28, 28))
    assert theta.dtype == grid.dtype == out.dtype == torch.float32
    torch.testing.assert_close(out, images, rtol=0, atol=2 * torch.finfo(torch.float32).eps * 28)


# ---------------------------------------------------------------- the module and loc nets


def test_spatial_transformer_output_size_channels_and_gradients() -> None:
    torch.manual_seed(0)
    module = SpatialTransformer(ConvLocNet(3, (42, 42)), make_transform("affine"), out_size=(21, 30))
    images = torch.rand(5, 3, 42, 42)
    out = module(images)
    assert out.shape == (5, 3, 21, 30)
    out.square().sum().backward()
    # Zero regression weights: at the first step only the regressor learns; its weight gradient is non-zero.
    assert module.regressor.weight.grad.abs().sum() > 0
    loc_ids = {id(p) for p in module.localisation_parameters()}
    expected = {id(p) for p in [*module.loc_net.parameters(), *module.regressor.parameters()]}
    assert loc_ids == expected and len(loc_ids) == len(list(module.parameters()))


@pytest.mark.parametrize(("size", "flat"), [((28, 28), 1), ((42, 42), 5), ((60, 60), 9), ((42, 60), (5, 9))])
def test_conv_loc_net_shapes(size: tuple[int, int], flat) -> None:
    # 28: /2 -> 14, conv5 -> 10, pool -> 5, conv5 -> 1;  42: 21 -> 17 -> 9 (ceil) -> 5;  60: 30 -> 26 -> 13 -> 9.
    net = ConvLocNet(2, size)
    rows, cols = flat if isinstance(flat, tuple) else (flat, flat)
    assert net[-2].in_features == 20 * rows * cols
    assert net(torch.rand(3, 2, *size)).shape == (3, net.out_features) == (3, 20)


def test_conv_loc_net_rejects_too_small_inputs_and_bad_options() -> None:
    with pytest.raises(ValueError, match="too small"):
        ConvLocNet(1, (16, 16))
    with pytest.raises(ValueError, match="downsample_op"):
        ConvLocNet(1, (28, 28), downsample_op="bicubic")


def test_fc_loc_net() -> None:
    net = FCLocNet(2 * 6 * 7, hidden=(32, 16))
    assert net.out_features == 16
    assert net(torch.rand(4, 2, 6, 7)).shape == (4, 16)
    assert sum(isinstance(layer, torch.nn.Linear) for layer in FCLocNet(10)) == 3


def test_bad_inputs_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="valid names: affine, attention, projective, tps"):
        make_transform("rotation")
    with pytest.raises(ValueError, match=r"theta of shape \[batch, 8\]"):
        ProjectiveTransform().grid(torch.zeros(2, 6), (4, 4))
    with pytest.raises(ValueError, match="out_size"):
        AffineTransform().grid(torch.zeros(2, 6), (0, 4))
    with pytest.raises(ValueError, match="same B"):
        sample(torch.zeros(2, 1, 4, 4), torch.zeros(3, 4, 4, 2))


def test_transform_parameter_counts_and_identities() -> None:
    assert [make_transform(name).n_params for name in TRANSFORMS] == [6, 3, 8, 32]
    assert AttentionTransform(fixed_scale=0.5).n_params == 2
    assert TPSTransform(5).n_params == 50
    for name in FAMILIES:
        identity = build(name).identity()
        assert identity.dtype == torch.float32 and identity.shape == (build(name).n_params,)
    # (x, y) pairs, row-major over the control grid: y outer, x inner.
    assert TPSTransform(2).identity().tolist() == [-1, -1, 1, -1, -1, 1, 1, 1]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_cuda_matches_cpu(name: str) -> None:
    torch.manual_seed(0)
    module = SpatialTransformer(FCLocNet(2 * 12 * 10), make_transform(name), out_size=(9, 8))
    with torch.no_grad():
        module.regressor.weight.normal_(std=1e-3)  # a non-identity warp
    images = torch.rand(4, 2, 12, 10)
    expected = module(images)
    torch.testing.assert_close(module.cuda()(images.cuda()).cpu(), expected, rtol=0, atol=1e-5)
