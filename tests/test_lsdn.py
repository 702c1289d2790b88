"""LSDN / VDN / CDN (Nguyen, Zhou & Vemulapalli, MICCAI 2015), ShrinkConnect and the per-voxel patch features."""
import time

import numpy as np
import torch

from medsynth_app.networks.lsdn import (LocationSensitiveNet, TargetScaling, VanillaDeepNet, loss, predict,
                                        train_lsdn)
from medsynth_app.networks.shrinkconnect import shrink, shrink_connect, somp
from medsynth_app.patches import extract_patches, multi_contrast_patches, normalised_coordinates


def test_latent_coordinate_gradient_is_eq8():
    torch.manual_seed(0)
    net = LocationSensitiveNet((5, 4, 3, 1), sigma=0.8).double()
    n = 6
    s = torch.randn(n, 2, dtype=torch.float64)
    x = torch.rand(n, 3, dtype=torch.float64) * 2 - 1
    t = torch.rand(n, dtype=torch.float64)
    loss(net(s, x), t).backward()

    (f2, b2), (f3, b3), (f4, b4) = ((layer.weight.detach(), layer.bias.detach()) for layer in net.layers)
    centres, sigma = net.centres.detach(), net.sigma
    gamma = torch.sigmoid

    def gamma_prime(u: torch.Tensor) -> torch.Tensor:
        return gamma(u) * (1 - gamma(u))

    offset = x[:, None, :] - centres[None]  # (n, p2, 3): x - x_i
    spatial = 2 * gamma(-offset.square().sum(2) / sigma**2)  # eq. (3)
    u2 = s @ f2.T + b2
    h2 = gamma(u2) * spatial  # eq. (2)
    u3 = h2 @ f3.T + b3
    u4 = gamma(u3) @ f4.T + b4  # eq. (4)
    d4 = (gamma(u4) - t[:, None]) * gamma_prime(u4) / n  # eq. (6), d^(K), with the 1/N of eq. (1)
    d3 = d4 @ f4 * gamma_prime(u3)  # eq. (5): F4^T d4 (.) gamma'(u3), one row per sample
    back = d3 @ f3  # F3^T d3
    eq8 = ((back * gamma(u2) * spatial * (2 - spatial))[:, :, None] * offset / sigma**2).sum(0)
    assert torch.allclose(net.centres.grad, eq8, rtol=1e-10, atol=1e-15)
    # eq. (6) for d^(2) (F3 transposed, as the chain rule requires) and eq. (7) for F3.
    assert torch.allclose(net.layers[0].bias.grad, (back * gamma_prime(u2) * spatial).sum(0), rtol=1e-10, atol=1e-15)
    assert torch.allclose(net.layers[1].weight.grad, d3.T @ h2, rtol=1e-10, atol=1e-15)


def test_network_shapes():
    n = 7
    s, x = torch.rand(n, 27), torch.rand(n, 3) * 2 - 1
    lsdn = LocationSensitiveNet()
    assert lsdn.sizes == (30, 200, 20, 1)
    assert [h.shape for h in lsdn.responses(s, x)] == [(n, 200), (n, 20), (n, 1)]
    assert lsdn(s, x).shape == (n, 1)
    assert lsdn.centres.shape == (200, 3) and lsdn.centres.abs().max() <= 1
    two_inputs = LocationSensitiveNet((57, 400, 40, 1))
    assert two_inputs(torch.rand(n, 54), x).shape == (n, 1)
    vdn = VanillaDeepNet()
    assert vdn.sizes == (27, 400, 40, 1)
    assert [h.shape for h in vdn.responses(s)] == [(n, 400), (n, 40), (n, 1)]
    cdn = VanillaDeepNet((30, 400, 40, 1))
    out = cdn(torch.cat([s, x], dim=1))
    assert out.shape == (n, 1) and bool(((out > 0) & (out < 1)).all())


def test_target_scaling_round_trip():
    t = np.array([3.0, 10.0, 250.0])
    scaling = TargetScaling.fit(t)
    assert np.allclose(scaling.encode(t), [0.1, 0.1 + 0.8 * 7 / 247, 0.9])
    assert np.allclose(scaling.decode(scaling.encode(t)), t)


def test_somp_recovers_the_support_of_simultaneously_sparse_signals():
    generator = torch.Generator().manual_seed(0)
    dictionary = torch.randn(1000, 10, generator=generator, dtype=torch.float64)
    signals = dictionary[:, [2, 5, 7]] @ torch.randn(3, 10, generator=generator, dtype=torch.float64)
    picked, coefficients = somp(dictionary, signals, 3)
    assert sorted(picked) == [2, 5, 7]
    assert torch.allclose(dictionary[:, picked] @ coefficients, signals)


def test_somp_spans_exactly_low_rank_hidden_responses():
    # 10 nodes whose responses are combinations of nodes 2, 5 and 7. Any 3 independent nodes span the same space,
    # so the check is that 3 picks reproduce every node exactly (eq. 9 with zero error).
    generator = torch.Generator().manual_seed(1)
    h = torch.empty(500, 10, dtype=torch.float64)
    h[:, [2, 5, 7]] = torch.rand(500, 3, generator=generator, dtype=torch.float64)
    others = [0, 1, 3, 4, 6, 8, 9]
    h[:, others] = h[:, [2, 5, 7]] @ torch.randn(3, 7, generator=generator, dtype=torch.float64)
    picked, coefficients = somp(h, h, 3)
    assert len(set(picked)) == 3
    assert torch.linalg.matrix_rank(h[:, picked]) == 3
    assert (h[:, picked] @ coefficients - h).abs().max() < 1e-10


def test_shrink_removes_duplicated_nodes_exactly():
    torch.manual_seed(2)
    net = LocationSensitiveNet((5, 12, 6, 1)).double()
    with torch.no_grad():
        f2, f3 = net.layers[0], net.layers[1]
        f2.weight[6:], f2.bias[6:], net.centres[6:] = f2.weight[:6], f2.bias[:6], net.centres[:6]
        f3.weight[3:], f3.bias[3:] = f3.weight[:3], f3.bias[:3]
    s = torch.randn(200, 2, dtype=torch.float64)
    x = torch.rand(200, 3, dtype=torch.float64) * 2 - 1
    small = shrink(net, s, x, 0.5)
    assert small.sizes == (5, 6, 3, 1) and small.centres.shape == (6, 3)
    assert torch.allclose(predict(small, s, x), predict(net, s, x), atol=1e-10)


def test_shrink_connect_keeps_training_error_within_tolerance():
    generator = torch.Generator().manual_seed(0)
    n = 2000
    intensity = torch.rand(n, 1, generator=generator) * 2 - 1
    s = intensity + 0.05 * torch.randn(n, 27, generator=generator)  # a nearly homogeneous 3x3x3 patch
    x = torch.rand(n, 3, generator=generator) * 2 - 1
    t = (0.5 + 0.25 * torch.sin(2 * intensity[:, 0]) * (1 + 0.3 * x[:, 0])
         + 0.1 * torch.randn(n, generator=generator))
    torch.manual_seed(0)
    net = LocationSensitiveNet((30, 80, 40, 1), sigma=1.0)
    net.place_centres_on(x, generator)
    # A higher learning rate than the paper's 0.25 so a few seconds of training reach the noise floor.
    history = train_lsdn(net, s, x, t, epochs=10, lr=1.0, batch_size=20)
    assert history[-1] < 1.25 * 0.5 * 0.1**2  # close to the noise floor of eq. (1)

    small, report = shrink_connect(net, s, x, t)
    assert report.fraction is not None and report.fraction < 1
    assert report.sizes_before == (30, 80, 40, 1)
    assert small.sizes == report.sizes_after and sum(small.sizes) < sum(net.sizes)
    assert report.error_after <= 1.02 * report.error_before
    assert float(loss(predict(small, s, x), t)) == report.error_after
    assert report.sweep[-1][0] == report.fraction
    assert all(error > 1.02 * report.error_before for _, _, error in report.sweep[:-1])


def test_extract_patches_matches_naive_slices():
    rng = np.random.default_rng(0)
    volume = rng.normal(size=(9, 10, 11)).astype(np.float32)
    mask = rng.random(volume.shape) < 0.3
    mask[0, 0, 0] = mask[8, 9, 10] = True
    index = np.stack(np.nonzero(mask), axis=1)
    for radius in (1, 2):
        patches = extract_patches(volume, mask, radius, chunk=7)
        assert patches.shape == (mask.sum(), (2 * radius + 1) ** 3) and patches.dtype == np.float32
        padded = np.pad(volume, radius, mode="edge")
        for row in [0, len(index) - 1, *rng.integers(0, len(index), 5)]:
            i, j, k = index[row]
            naive = padded[i:i + 2 * radius + 1, j:j + 2 * radius + 1, k:k + 2 * radius + 1].ravel()
            assert np.array_equal(patches[row], naive)
    both = multi_contrast_patches([volume, 2 * volume], mask)
    assert both.shape == (mask.sum(), 54) and np.allclose(both[:, 27:], 2 * both[:, :27])


def test_normalised_coordinates():
    mask = np.zeros((5, 4, 3), dtype=bool)
    mask[0, 0, 0] = mask[4, 3, 2] = mask[2, 1, 1] = True
    assert np.allclose(normalised_coordinates(mask.shape, mask), [[-1, -1, -1], [0, -1 / 3, 0], [1, 1, 1]])


def test_timing_lsdn1_forward_on_a_brain_sized_volume(capsys):
    shape = (240, 240, 155)
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    mask = sum(((axis - n / 2) / r) ** 2 for axis, n, r in zip(grid, shape, (70, 85, 65))) <= 1
    volume = np.random.default_rng(0).random(shape, dtype=np.float32)
    start = time.perf_counter()
    s = extract_patches(volume, mask)
    x = normalised_coordinates(shape, mask)
    features = time.perf_counter() - start
    net = LocationSensitiveNet((30, 200, 20, 1))
    start = time.perf_counter()
    out = predict(net, s, x)
    forward = time.perf_counter() - start
    assert out.shape == (mask.sum(), 1) and ((out > 0) & (out < 1)).all()
    np.testing.assert_array_equal(s[:, 13], volume[mask])  # the centre of each 3x3x3 patch is the voxel itself
    # batched over 8192 voxels at a time: rows across a batch boundary and of the last, partial batch are those of
    # the network applied to them directly
    rows = np.r_[0:3, 8190:8194, len(s) - 3:len(s)]
    with torch.no_grad():
        direct = net(torch.as_tensor(s[rows]), torch.as_tensor(x[rows], dtype=torch.float32))
    torch.testing.assert_close(out[rows], direct)
    with capsys.disabled():
        print(f"\nLSDN-1 [30-200-20-1] on {mask.sum()} voxels of {shape}, {torch.get_num_threads()} threads: "
              f"patches+coordinates {features:.2f} s, forward {forward:.2f} s")
