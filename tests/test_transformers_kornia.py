"""Our warps against independent implementations: kornia (projective, affine, TPS evaluation) and scipy (TPS solve).

Everything runs in float64, so agreement is checked to near double precision rather than float32 round-off.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from kornia.geometry.conversions import denormalize_homography
from kornia.geometry.transform import warp_affine, warp_image_tps, warp_perspective
from scipy.interpolate import RBFInterpolator

from stn.runtime import ALIGN_CORNERS
from stn.transformers import AffineTransform, ProjectiveTransform, TPSTransform, warp
from stn.transformers.grids import target_points

IN_SIZE, OUT_SIZE = (9, 12), (7, 10)


def random_images_and_theta(n_params: int, identity: torch.Tensor, spread: float, seed: int):
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(4, 2, *IN_SIZE, generator=generator, dtype=torch.float64)
    theta = identity.double() + spread * torch.randn(4, n_params, generator=generator, dtype=torch.float64)
    return images, theta


def kornia_pixel_homography(normalised: torch.Tensor) -> torch.Tensor:
    """Our target->source normalised map as kornia's source->destination PIXEL homography."""
    return denormalize_homography(torch.linalg.inv(normalised), IN_SIZE, OUT_SIZE, align_corners=ALIGN_CORNERS)


def test_projective_matches_kornia_warp_perspective() -> None:
    transform = ProjectiveTransform()
    images, theta = random_images_and_theta(8, transform.identity(), spread=0.15, seed=0)
    ours = warp(images, transform, theta, OUT_SIZE)
    homography = kornia_pixel_homography(transform.matrix(theta))
    theirs = warp_perspective(images, homography, OUT_SIZE, align_corners=ALIGN_CORNERS)
    assert (ours != 0).float().mean() > 0.5  # a real comparison: most output pixels sample the image
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-10)


def test_affine_matches_kornia_warp_affine() -> None:
    transform = AffineTransform()
    images, theta = random_images_and_theta(6, transform.identity(), spread=0.2, seed=1)
    ours = warp(images, transform, theta, OUT_SIZE)
    last_row = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64).expand(4, 1, 3)
    homography = kornia_pixel_homography(torch.cat([transform.matrix(theta), last_row], dim=1))
    theirs = warp_affine(images, homography[:, :2], OUT_SIZE, align_corners=ALIGN_CORNERS)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-10)


@pytest.mark.parametrize("grid_size", [3, 4])
def test_tps_grid_matches_scipy_thin_plate_spline(grid_size: int) -> None:
    """scipy's RBFInterpolator (kernel r^2 log r, linear polynomial, no smoothing) is the textbook TPS."""
    transform = TPSTransform(grid_size)
    _, theta = random_images_and_theta(transform.n_params, transform.identity(), spread=0.1, seed=2)
    grid = transform.grid(theta, OUT_SIZE).reshape(4, -1, 2)
    points = target_points(OUT_SIZE, torch.device("cpu"), torch.float64)[:2].T.numpy()
    for ours, source in zip(grid, theta.view(4, -1, 2), strict=True):
        spline = RBFInterpolator(transform.control_points.numpy(), source.numpy(), kernel="thin_plate_spline")
        np.testing.assert_allclose(ours.numpy(), spline(points), rtol=0, atol=1e-7)


def textbook_tps_weights(centres: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Solve [[K, P], [P^T, 0]] [w; a] = [values; 0] with K_ij = r^2 log r (kornia's kernel), P = [1, x, y]."""
    squared = ((centres[:, None] - centres[None]) ** 2).sum(-1)
    kernel = 0.5 * squared * np.log(np.where(squared > 0, squared, 1.0))
    poly = np.concatenate([np.ones((len(centres), 1)), centres], axis=1)
    system = np.block([[kernel, poly], [poly.T, np.zeros((3, 3))]])
    solution = np.linalg.solve(system, np.concatenate([values, np.zeros((3, 2))]))
    return solution[:-3], solution[-3:]


def test_tps_warp_matches_kornia_warp_image_tps() -> None:
    """kornia's spline evaluation + sampling, fed the textbook weights.

    kornia's own get_tps_transform(a, b) builds its kernel between the two point sets, K_ij = U(|a_i - b_j|),
    which is the standard TPS only when a == b; so the weights come from the textbook solve above.
    """
    transform = TPSTransform(4)
    images, theta = random_images_and_theta(transform.n_params, transform.identity(), spread=0.1, seed=3)
    centres = transform.control_points.numpy()
    solved = [textbook_tps_weights(centres, source.numpy()) for source in theta.view(4, -1, 2)]
    kernel_weights = torch.from_numpy(np.stack([kernel for kernel, _ in solved]))
    affine_weights = torch.from_numpy(np.stack([affine for _, affine in solved]))
    centres_batch = transform.control_points.expand(4, -1, -1)
    theirs = warp_image_tps(images, centres_batch, kernel_weights, affine_weights, align_corners=ALIGN_CORNERS)
    torch.testing.assert_close(warp(images, transform, theta), theirs, rtol=0, atol=1e-10)
