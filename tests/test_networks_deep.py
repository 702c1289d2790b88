"""Deep synthesis networks and their losses: shapes, paper arithmetic, hand-computed loss values, learning checks."""
from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from monai.losses import SSIMLoss

from medsynth_app.losses import (
    MultimodalSynthesisLoss,
    PatchMSEWithSSIM,
    SynNetJointLoss,
    edge_weighted_l2,
    edge_weights,
    total_variation,
)
from medsynth_app.networks.cae3d import ConvAutoencoder3D
from medsynth_app.networks.multimodal import FUSIONS, MultimodalSynthesisNet
from medsynth_app.networks.replicate_conv import ReplicatePaddedConv2d
from medsynth_app.networks.synnet import SynNet
from medsynth_app.training.inference import inference_network

INPUTS = ("T1", "T2", "DWI")


@pytest.fixture(autouse=True)
def _seed_and_one_thread():
    # tiny tensors: one thread is faster than two and leaves the shared cores to others
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


def _images(names, batch=2, size=8):
    return {name: torch.rand(batch, 1, size, size) for name in names}


def _n_params(module):
    return sum(p.numel() for p in module.parameters())


# --- multimodal (Chartsias et al. 2018) ---------------------------------------------------------------------------


@pytest.mark.parametrize("fusion", FUSIONS)
def test_multimodal_every_input_subset(fusion):
    net = MultimodalSynthesisNet(INPUTS, ["FLAIR", "T1c"], fusion=fusion).eval()
    for k in (1, 2, 3):
        for subset in itertools.combinations(INPUTS, k):
            out = net(_images(subset))
            assert set(out["outputs"]) == {"FLAIR", "T1c"}
            assert all(y.shape == (2, 1, 8, 8) and (y >= 0).all() for y in out["outputs"].values())
            assert list(out["latents"]) == list(subset)
            assert set(out["individual"]) == set(subset)
            assert all(out["individual"][i]["FLAIR"].shape == (2, 1, 8, 8) for i in subset)


def test_multimodal_fusions_and_batched_decoding_match_their_definitions():
    images = _images(INPUTS)
    for fusion in ("max", "mean"):
        net = MultimodalSynthesisNet(INPUTS, ["FLAIR"], fusion=fusion).eval()
        out = net(images)
        stacked = torch.stack([out["latents"][n] for n in INPUTS])
        expected = stacked.amax(0) if fusion == "max" else stacked.mean(0)
        assert torch.allclose(out["fused_latent"], expected)
        decoder = net.decoders["FLAIR"]
        assert torch.allclose(out["outputs"]["FLAIR"], decoder(out["fused_latent"]), atol=1e-6)
        assert torch.allclose(out["individual"]["T2"]["FLAIR"], decoder(out["latents"]["T2"]), atol=1e-6)
        lean = net(images, decode_individual=False)
        assert lean["individual"] == {} and torch.allclose(lean["outputs"]["FLAIR"], out["outputs"]["FLAIR"], atol=1e-6)
    net = MultimodalSynthesisNet(INPUTS, ["FLAIR"], fusion="output_mean").eval()
    out = net(images, decode_individual=False)
    assert out["fused_latent"] is None
    mean = torch.stack([out["individual"][n]["FLAIR"] for n in INPUTS]).mean(0)
    assert torch.allclose(out["outputs"]["FLAIR"], mean)


def test_hemis_channel_arithmetic():
    net = MultimodalSynthesisNet(INPUTS, ["FLAIR"], latent_channels=16, fusion="hemis").eval()
    assert net.encoders["T1"].up1[-2].out_channels == 8
    assert net.decoders["FLAIR"].block1[0].in_channels == 16
    out = net(_images(["T1", "DWI"]))
    assert out["latents"]["T1"].shape == (2, 8, 8, 8)
    assert out["fused_latent"].shape == (2, 16, 8, 8)
    pair = torch.stack([out["latents"]["T1"], out["latents"]["DWI"]])
    assert torch.allclose(out["fused_latent"][:, :8], pair.mean(0))
    assert torch.allclose(out["fused_latent"][:, 8:], pair.var(0, unbiased=False))
    single = net(_images(["T2"]))  # one input: mean = the latent, variance = 0
    assert torch.equal(single["fused_latent"][:, :8], single["latents"]["T2"])
    assert not single["fused_latent"][:, 8:].any()
    with pytest.raises(ValueError, match="even"):
        MultimodalSynthesisNet(INPUTS, ["FLAIR"], latent_channels=15, fusion="hemis")


@pytest.mark.parametrize("fusion", FUSIONS)
def test_a_mixed_batch_equals_each_sample_run_with_its_own_inputs(fusion):
    """Presence flags: sample 0 holds T1 and DWI, sample 1 T2 alone, sample 2 all three; the batch's outputs and
    fused latents equal those of each sample run alone with only its inputs (whatever the absent pixels hold)."""
    net = MultimodalSynthesisNet(INPUTS, ["FLAIR"], fusion=fusion).eval()
    images = _images(INPUTS, batch=3)
    held = {"T1": [True, False, True], "T2": [False, True, True], "DWI": [True, False, True]}
    present = {name: torch.tensor(flags) for name, flags in held.items()}
    out = net(images, present=present)
    for sample in range(3):
        own = {name: images[name][sample:sample + 1] for name in INPUTS if held[name][sample]}
        alone = net(own)
        torch.testing.assert_close(out["outputs"]["FLAIR"][sample:sample + 1], alone["outputs"]["FLAIR"])
        if fusion != "output_mean":
            torch.testing.assert_close(out["fused_latent"][sample:sample + 1], alone["fused_latent"])
    noise = {name: torch.where(present[name][:, None, None, None], x, torch.randn_like(x) * 100)
             for name, x in images.items()}
    torch.testing.assert_close(net(noise, present=present)["outputs"]["FLAIR"], out["outputs"]["FLAIR"])
    everyone = {name: torch.ones(3, dtype=torch.bool) for name in INPUTS}
    torch.testing.assert_close(net(images, present=everyone)["outputs"]["FLAIR"], net(images)["outputs"]["FLAIR"])
    with pytest.raises(ValueError, match="at least one present input"):
        net(images, present={name: torch.tensor([True, False, True]) for name in INPUTS})
    with pytest.raises(ValueError, match="expected 3 flags"):
        net(images, present={"T1": torch.tensor([True, False])})


def test_the_cost_of_a_mixed_batch_scores_only_what_each_sample_holds():
    """Sample 1 lacks target B and input T2: its B pixels and its T2 latent never reach the cost (changing them
    changes nothing), c3 of B is sample 0's alone, and flags all True give the plain cost."""
    net = MultimodalSynthesisNet(["T1", "T2"], ["A", "B"]).eval()
    images = _images(["T1", "T2"])
    present = {"T1": torch.tensor([True, True]), "T2": torch.tensor([True, False])}
    available = {"A": torch.tensor([True, True]), "B": torch.tensor([True, False])}
    targets = {"A": torch.rand(2, 1, 8, 8), "B": torch.rand(2, 1, 8, 8)}
    cost = MultimodalSynthesisLoss()
    out = net(images, present=present)
    terms = cost.terms(out, targets, available=available)
    changed_targets = {"A": targets["A"], "B": torch.cat([targets["B"][:1], targets["B"][1:] + 5])}
    changed_images = {"T1": images["T1"], "T2": torch.cat([images["T2"][:1], images["T2"][1:] * 7])}
    again = cost.terms(net(changed_images, present=present), changed_targets, available=available)
    for name in terms:
        torch.testing.assert_close(again[name], terms[name])
    c3 = ((out["outputs"]["A"] - targets["A"]).abs().mean()
          + (out["outputs"]["B"][:1] - targets["B"][:1]).abs().mean()) / 2
    torch.testing.assert_close(terms["c3"], c3)
    # c2 (eq. 3): only sample 0 holds two latents; sample 1's single latent has no variance
    pair = torch.stack([out["latents"]["T1"][:1], out["latents"]["T2"][:1]])
    torch.testing.assert_close(terms["c2"], pair.var(0, unbiased=False).sum() / out["latents"]["T1"].numel())
    complete = net(images)
    everyone = {name: torch.ones(2, dtype=torch.bool) for name in targets}
    torch.testing.assert_close(cost(complete, targets, available=everyone), cost(complete, targets))
    with pytest.raises(ValueError, match="no sample holds"):
        cost(out, {"B": targets["B"]}, available={"B": torch.tensor([False, False])})


@pytest.mark.parametrize("kernel_size", [1, 3, 5])
@pytest.mark.parametrize("layout", [torch.channels_last, torch.contiguous_format])
def test_replicate_padded_conv_equals_torchs_in_values_gradients_and_layout(kernel_size, layout):
    ours = ReplicatePaddedConv2d(3, 4, kernel_size)
    torchs = torch.nn.Conv2d(3, 4, kernel_size, padding=kernel_size // 2, padding_mode="replicate")
    torchs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 3, 9, 7).contiguous(memory_format=layout)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y1, y2 = ours(x1), torchs(x2)
    torch.testing.assert_close(y1, y2)
    assert y1.is_contiguous(memory_format=layout)
    weights = torch.randn_like(y1)
    (y1 * weights).sum().backward()
    (y2 * weights).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad)
    torch.testing.assert_close(ours.weight.grad, torchs.weight.grad)
    with pytest.raises(ValueError, match="odd kernel"):
        ReplicatePaddedConv2d(3, 4, 2)


@pytest.mark.parametrize("fusion", FUSIONS)
def test_multimodal_decoders_run_in_the_layout_of_channels_last_inputs(fusion):
    # a channels-first map among channels-last ones made every decoder convolution convert its input
    net = MultimodalSynthesisNet(INPUTS, ["FLAIR"], fusion=fusion).to(memory_format=torch.channels_last)
    seen = []
    for conv in net.decoders["FLAIR"].modules():
        if isinstance(conv, torch.nn.Conv2d):
            conv.register_forward_pre_hook(lambda _, args: seen.append(args[0].is_contiguous(
                memory_format=torch.channels_last) and not args[0].is_contiguous()))
    images = {n: x.contiguous(memory_format=torch.channels_last) for n, x in _images(INPUTS[:2], size=8).items()}
    net(images, decode_individual=True)
    assert len(seen) == 5 and all(seen)


def test_multimodal_input_errors():
    net = MultimodalSynthesisNet(INPUTS, ["FLAIR"])
    with pytest.raises(ValueError, match="'PD'"):
        net({"T1": torch.rand(1, 1, 8, 8), "PD": torch.rand(1, 1, 8, 8)})
    with pytest.raises(ValueError, match="no input"):
        net({})
    with pytest.raises(ValueError, match="no input"):
        net({"T1": None})
    assert net({"T1": torch.rand(1, 1, 8, 8), "T2": None})["latents"].keys() == {"T1"}
    with pytest.raises(ValueError, match="divisible by 4"):
        net({"T1": torch.rand(1, 1, 10, 8)})
    with pytest.raises(ValueError, match="'T2'"):
        net({"T1": torch.rand(1, 1, 8, 8), "T2": torch.rand(1, 1, 12, 12)})
    with pytest.raises(ValueError, match="'PD'"):
        net(_images(["T1"]), outputs=["PD"])
    with pytest.raises(ValueError, match="lesion"):
        net(_images(["T1"]), lesion=torch.zeros(2, 1, 8, 8))


def test_lesion_channel():
    net = MultimodalSynthesisNet(["DWI"], ["FLAIR"], lesion_channel=True)
    assert net.encoders["DWI"].level1[0].in_channels == 2
    lesion = (torch.rand(2, 1, 8, 8) > 0.8).float()
    assert net(_images(["DWI"]), lesion)["outputs"]["FLAIR"].shape == (2, 1, 8, 8)
    with pytest.raises(ValueError, match="lesion"):
        net(_images(["DWI"]))


def test_add_output_with_frozen_encoders_trains_only_the_new_decoder():
    net = MultimodalSynthesisNet(["T1", "T2"], ["FLAIR"])
    net.freeze_encoders()
    decoder = net.add_output("DWI")
    assert net.outputs == ["FLAIR", "DWI"]
    with pytest.raises(ValueError, match="already"):
        net.add_output("DWI")
    before = {k: v.clone() for k, v in net.state_dict().items()}
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-2)  # everything: frozen parameters get no gradient
    images = _images(["T1", "T2"])
    loss = MultimodalSynthesisLoss()(net(images, outputs=["DWI"]), {"DWI": torch.rand(2, 1, 8, 8)})
    loss.backward()
    optimiser.step()
    after = net.state_dict()
    for key in before:
        changed = not torch.equal(before[key], after[key])
        assert changed == key.startswith("decoders.DWI."), key
    assert all(p.grad is None for p in net.encoders.parameters())
    assert all(p.requires_grad for p in decoder.parameters())
    net.freeze_encoders(False)
    assert all(p.requires_grad for p in net.encoders.parameters())


def test_multimodal_loss_hand_computed():
    def t(*values):  # (1, 1, 1, 2) image
        return torch.tensor(values, dtype=torch.float32).reshape(1, 1, 1, 2)

    def z(channel0, channel1):  # (1, 2, 1, 2) latent
        return torch.tensor([channel0, channel1], dtype=torch.float32).reshape(1, 2, 1, 2)

    prediction = {
        # per channel and pixel, the population variance across the three latents:
        # ch0 px0: 1, 3, 5 -> mean 3, var (4 + 0 + 4) / 3 = 8/3; ch0 px1: 2, 2, 2 -> 0
        # ch1 px0: 0, 4, 2 -> mean 2, var (4 + 4 + 0) / 3 = 8/3; ch1 px1: 0, 0, 0 -> 0
        "latents": {"T1": z([1, 2], [0, 0]), "T2": z([3, 2], [4, 0]), "DWI": z([5, 2], [2, 0])},
        "individual": {
            "T1": {"A": t(0, 1), "B": t(2, 0)},
            "T2": {"A": t(1, 3), "B": t(0, 0)},
            "DWI": {"A": t(1, 1), "B": t(0, 2)},
        },
        "outputs": {"A": t(2, 1), "B": t(0, 4)},
        "fused_latent": None,
    }
    targets = {"A": t(1, 1), "B": t(0, 0)}
    terms = MultimodalSynthesisLoss().terms(prediction, targets)
    # c2 = (8/3 + 0 + 8/3 + 0) / 4 = 4/3
    assert terms["c2"].item() == pytest.approx(4 / 3)
    # c1 = [(MAE T1->A 0.5 + T1->B 1) + (T2->A 1 + T2->B 0) + (DWI->A 0 + DWI->B 1)] / 2 outputs = 1.75
    assert terms["c1"].item() == pytest.approx(1.75)
    # c3 = (MAE A 0.5 + MAE B 2) / 2 = 1.25
    assert terms["c3"].item() == pytest.approx(1.25)
    assert MultimodalSynthesisLoss()(prediction, targets).item() == pytest.approx(1.75 + 4 / 3 + 1.25)
    # mask keeping pixel 0 only: c2 = (8/3 + 8/3) / 2 = 8/3
    masked = MultimodalSynthesisLoss().terms(prediction, targets, mask=t(1, 0))
    assert masked["c2"].item() == pytest.approx(8 / 3)
    # c1 on pixel 0: T1 (0-1 -> 1, 2-0 -> 2), T2 (0, 0), DWI (0, 0) -> 3 / 2 outputs
    assert masked["c1"].item() == pytest.approx(1.5)


def test_multimodal_ssim_term_scores_the_fused_output_of_the_samples_holding_each_target():
    torch.manual_seed(0)
    net = MultimodalSynthesisNet(["T1", "T2"], ["FLAIR", "PD"])
    out = net(_images(["T1", "T2"], size=16), decode_individual=True)
    targets = {"FLAIR": torch.rand(2, 1, 16, 16) * 3, "PD": torch.rand(2, 1, 16, 16)}
    ranges = {"FLAIR": 3.0, "PD": 1.0}
    plain = MultimodalSynthesisLoss().terms(out, targets)
    terms = MultimodalSynthesisLoss(ssim_weight=0.5, data_ranges=ranges).terms(out, targets)
    assert set(terms) == {"c1", "c2", "c3", "ssim"} and set(plain) == {"c1", "c2", "c3"}
    for name in plain:
        assert terms[name].item() == pytest.approx(plain[name].item())

    def dissimilarity(target, samples=slice(None)):
        return SSIMLoss(spatial_dims=2, data_range=ranges[target])(out["outputs"][target][samples],
                                                                    targets[target][samples]).item()

    assert terms["ssim"].item() == pytest.approx((dissimilarity("FLAIR") + dissimilarity("PD")) / 2, rel=1e-5)
    weighted = MultimodalSynthesisLoss(ssim_weight=0.5, data_ranges=ranges)(out, targets).item()
    assert weighted == pytest.approx(sum(plain.values()).item() + 0.5 * terms["ssim"].item(), rel=1e-5)
    swapped = MultimodalSynthesisLoss(ssim_weight=0.5, data_ranges={"FLAIR": 1.0, "PD": 3.0}).terms(out, targets)
    assert swapped["ssim"].item() != pytest.approx(terms["ssim"].item(), rel=1e-3)
    # the second sample lacks PD: PD's term comes from the first sample alone
    available = {"FLAIR": torch.tensor([True, True]), "PD": torch.tensor([True, False])}
    partial = MultimodalSynthesisLoss(ssim_weight=0.5, data_ranges=ranges).terms(out, targets, available=available)
    assert partial["ssim"].item() == pytest.approx((dissimilarity("FLAIR") + dissimilarity("PD", slice(0, 1))) / 2,
                                                   rel=1e-5)


def test_multimodal_loss_errors():
    net = MultimodalSynthesisNet(["T1"], ["FLAIR"])
    with pytest.raises(ValueError, match="decode_individual"):
        MultimodalSynthesisLoss()(net(_images(["T1"]), decode_individual=False), {"FLAIR": torch.rand(2, 1, 8, 8)})
    with pytest.raises(ValueError, match="'T2'"):
        MultimodalSynthesisLoss()(net(_images(["T1"])), {"T2": torch.rand(2, 1, 8, 8)})
    with pytest.raises(ValueError, match="ssim_weight"):
        MultimodalSynthesisLoss(ssim_weight=-1.0)
    with pytest.raises(ValueError, match="data ranges"):
        MultimodalSynthesisLoss(ssim_weight=1.0, data_ranges={"FLAIR": 0.0})
    with pytest.raises(ValueError, match="no SSIM data range for target 'FLAIR'"):
        MultimodalSynthesisLoss(ssim_weight=1.0)(net(_images(["T1"], size=16)), {"FLAIR": torch.rand(2, 1, 16, 16)})
    with pytest.raises(ValueError, match="11x11"):
        MultimodalSynthesisLoss(ssim_weight=1.0, data_ranges={"FLAIR": 1.0})(net(_images(["T1"])),
                                                                            {"FLAIR": torch.rand(2, 1, 8, 8)})


# --- SynNet -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n_inputs", "n_outputs", "size"), [(1, 1, 64), (2, 1, 240), (2, 2, 64), (1, 1, 181)]
)
def test_synnet_shapes(n_inputs, n_outputs, size):
    net = SynNet(n_inputs, n_outputs, features=4).eval()
    with torch.no_grad():
        y = net(torch.rand(1, n_inputs, size, size))
    assert y.shape == (1, n_outputs, size, size)


def test_synnet_unpools_at_the_pooling_indices():
    net = SynNet(2, 1, features=4).eval()
    seen = []
    for arm in net.decoders:
        for block in arm:
            block.unpool.register_forward_hook(lambda module, args, output: seen.append((args, output)))
    with torch.no_grad():
        net(torch.rand(1, 2, 64, 64))
    assert len(seen) == 2 * 4  # each of 4 decoder blocks unpools once per encoder arm
    for (x, indices), output in seen:
        # every value lands exactly where its encoder's max-pooling found the maximum, zeros elsewhere
        assert torch.equal(output.flatten(2).gather(2, indices.flatten(2)), x.flatten(2))
        assert (output != 0).sum() <= x.numel()
        assert output.shape[-1] == 2 * x.shape[-1]
    assert net.synthesis[0].in_channels == 4 and net.synthesis[0].kernel_size == (1, 1)


def test_synnet_default_widths_and_errors():
    net = SynNet(2, 1)
    assert net.synthesis[0].in_channels == 64
    assert len(net.encoders) == 2 and len(net.decoders) == 1 and len(net.encoders[0]) == 4
    with pytest.raises(ValueError, match="B, 2, H, W"):
        net(torch.rand(1, 1, 32, 32))
    with pytest.raises(ValueError, match=">= 16"):
        net(torch.rand(1, 2, 8, 8))


# --- 3-D convolutional autoencoder --------------------------------------------------------------------------------


def _trained_like(net: torch.nn.Module) -> torch.nn.Module:
    """Batch norms with running statistics and affines away from their defaults, as after training."""
    for norm in (m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)):
        norm.running_mean.uniform_(-1, 1)
        norm.running_var.uniform_(0.5, 2)
        torch.nn.init.uniform_(norm.weight, 0.5, 1.5)
        torch.nn.init.uniform_(norm.bias, -0.5, 0.5)
    return net


def _in_place_activations(net: torch.nn.Module) -> int:
    activations = (torch.nn.ReLU, torch.nn.LeakyReLU)
    return sum(getattr(m, "inplace", False) for m in net.modules() if isinstance(m, activations))


def test_the_inference_copy_of_synnet_folds_its_norms_and_keeps_its_outputs():
    """Each conv-BN pair folded into one conv and the ReLUs in place: the same output; the original network keeps
    its norms, its out-of-place activations and its training mode."""
    net = _trained_like(SynNet(2, 1, features=8, depth=2))
    x = torch.randn(3, 2, 24, 20)
    copy = inference_network(net)
    assert net.training and not copy.training
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in copy.modules())
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules()) == 7  # 2 x 2 encoder, 2 decoder, bottleneck
    assert _in_place_activations(copy) == 7 and _in_place_activations(net) == 0
    with torch.no_grad():
        torch.testing.assert_close(copy(x), net.eval()(x), rtol=1e-5, atol=1e-5)


def test_the_inference_copies_of_multimodal_and_cae3d_keep_their_outputs():
    """Activations after convolutions run in place: the multimodal encoders' LeakyReLUs feed their skips and the
    cae3d's ReLUs feed batch norms, and the outputs are unchanged."""
    net = MultimodalSynthesisNet(["T1", "T2"], ["FLAIR"], latent_channels=4)
    images = _images(["T1", "T2"], size=16)
    copy = inference_network(net)
    assert _in_place_activations(copy) == sum(isinstance(m, (torch.nn.ReLU, torch.nn.LeakyReLU))
                                              for m in net.modules()) > 0
    with torch.no_grad():
        torch.testing.assert_close(copy(images, outputs=["FLAIR"])["outputs"]["FLAIR"],
                                   net.eval()(images, outputs=["FLAIR"])["outputs"]["FLAIR"])
    cae = _trained_like(ConvAutoencoder3D(1, features=4))
    copy = inference_network(cae)
    assert _in_place_activations(copy) > 0
    x = torch.randn(1, 1, 38, 38, 38)
    with torch.no_grad():
        torch.testing.assert_close(copy(x), cae.eval()(x))


def test_cae3d_size_arithmetic():
    # base 3-3-2: 38 -3 convs-> 32 -pool-> 16 -3 convs-> 10 -up-> 20 -2 convs-> 16 (Sec. 3.2)
    assert ConvAutoencoder3D.output_size(38) == 16
    assert ConvAutoencoder3D.input_size_for(16) == 38
    # deep 4-4-3: 46 -> 38 -> 19 -> 11 -> 22 -> 16 (Sec. 3.4.2 trains it on 46^3 patches)
    assert ConvAutoencoder3D.output_size(46, depth="deep") == 16
    assert ConvAutoencoder3D.input_size_for(16, depth="deep") == 46
    # the whole 260 x 311 x 260 volume padded by 11 gives 260 x 310 x 260 (Sec. 3.2: "cropping by one on y")
    assert ConvAutoencoder3D.output_size((282, 333, 282)) == (260, 310, 260)
    for depth in ("base", "deep"):
        for out in (2, 16, 24):
            assert ConvAutoencoder3D.output_size(ConvAutoencoder3D.input_size_for(out, depth), depth) == out
    with pytest.raises(ValueError, match="even"):
        ConvAutoencoder3D.input_size_for(15)
    with pytest.raises(ValueError, match="too small"):
        ConvAutoencoder3D.output_size(22)
    with pytest.raises(ValueError, match="depth"):
        ConvAutoencoder3D(depth="wide")


@pytest.mark.parametrize(("depth", "side"), [("base", 38), ("deep", 46)])
def test_cae3d_forward_shapes(depth, side):
    net = ConvAutoencoder3D(in_channels=2, depth=depth, features=4).eval()
    with torch.no_grad():
        assert net(torch.rand(1, 2, side, side, side)).shape == (1, 1, 16, 16, 16)
    with pytest.raises(ValueError, match="too small"):
        net(torch.rand(1, 2, 20, 20, 20))


def test_cae3d_parameter_counts_match_the_paper():
    assert _n_params(ConvAutoencoder3D()) == 168_289  # Sec. 3.4.1
    assert _n_params(ConvAutoencoder3D(depth="deep")) == 251_521  # Sec. 3.4.2
    assert _n_params(ConvAutoencoder3D(features=48)) == 376_849  # Sec. 3.4.1 "wide"
    net = ConvAutoencoder3D(features=4, sigmoid_output=True)
    y = net(torch.randn(1, 1, 30, 30, 30))
    assert y.shape == (1, 1, 8, 8, 8) and ((y > 0) & (y < 1)).all()


@pytest.mark.parametrize("momentum", [0.1, 0.01])
def test_cae3d_batch_norm_statistics_move_by_the_momentum(momentum):
    """One training-mode batch moves each running mean from 0 to momentum x the batch mean of that norm's input
    (Keras' moving-average 0.99 is momentum 0.01)."""
    torch.manual_seed(0)
    net = ConvAutoencoder3D(features=4, bn_momentum=momentum).train()
    first_norm = next(m for m in net.layers if isinstance(m, torch.nn.BatchNorm3d))
    x = torch.rand(2, 1, 30, 30, 30)
    with torch.no_grad():
        net(x)
        seen = net.layers[1](net.layers[0](x))  # the input of the first batch norm
    torch.testing.assert_close(first_norm.running_mean, momentum * seen.mean(dim=(0, 2, 3, 4)))


# --- SynNet losses ------------------------------------------------------------------------------------------------


def test_total_variation_hand_computed():
    image = torch.tensor([[0.0, 1.0, 1.0], [0.0, 1.0, 1.0], [2.0, 2.0, 2.0]]).reshape(1, 1, 3, 3)
    # p = S(i+1, j) - S(i, j): rows [0 0 0], [2 1 1], [0 0 0] (last row: nothing below)
    # q = S(i, j+1) - S(i, j): rows [1 0 0], [1 0 0], [0 0 0] (last column: nothing right)
    # t = sqrt(p^2 + q^2): rows [1 0 0], [sqrt 5, 1, 1], [0 0 0]
    assert total_variation(image, reduction="sum").item() == pytest.approx(3 + math.sqrt(5))
    assert total_variation(image).item() == pytest.approx((3 + math.sqrt(5)) / 9)
    flat = torch.ones(1, 1, 3, 3, requires_grad=True)
    total_variation(flat).backward()
    assert total_variation(flat).item() == 0 and torch.isfinite(flat.grad).all()


def test_edge_weighted_l2_hand_computed():
    target = torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 4).reshape(1, 1, 4, 4)
    # Sobel x response (replicated border): columns 0, 4, 4, 0 -> edges at columns 1 and 2
    weights = edge_weights(target, edge_weight=10.0)
    assert torch.equal(weights[0, 0], torch.tensor([[1.0, 11.0, 11.0, 1.0]] * 4))
    # error 0.5 everywhere: 0.25 * (8 * 1 + 8 * 11) / 16 = 1.5
    assert edge_weighted_l2(target + 0.5, target).item() == pytest.approx(1.5)
    assert torch.equal(edge_weights(torch.zeros(1, 1, 4, 4)), torch.ones(1, 1, 4, 4))


def test_costs_stay_float32_under_bfloat16_autocast():
    # mean-normalised brain intensities (1-4) and a near-perfect prediction: bfloat16 SSIM rounds to exactly 1 here
    target = torch.rand(4, 1, 64, 64) * 3 + 1
    prediction = target + 0.01 * torch.randn_like(target)
    net = MultimodalSynthesisNet(["T1", "T2"], ["FLAIR"])
    output = net(_images(["T1", "T2"], size=16), decode_individual=True)
    flair = {"FLAIR": torch.rand(2, 1, 16, 16) * 3 + 1}
    expected = SynNetJointLoss()(prediction, target), MultimodalSynthesisLoss()(output, flair)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        joint, multimodal = SynNetJointLoss()(prediction, target), MultimodalSynthesisLoss()(output, flair)
    assert joint.dtype == multimodal.dtype == torch.float32
    assert joint.item() == pytest.approx(expected[0].item(), rel=1e-6)
    assert multimodal.item() == pytest.approx(expected[1].item(), rel=1e-6)


def test_synnet_loss_kinds():
    target = torch.rand(2, 1, 16, 16)
    prediction = torch.rand(2, 1, 16, 16)
    assert SynNetJointLoss("l2")(prediction, target).item() == pytest.approx(F.mse_loss(prediction, target).item())
    assert SynNetJointLoss("weighted_l2")(prediction, target).item() == pytest.approx(
        edge_weighted_l2(prediction, target).item()
    )
    joint = SynNetJointLoss(data_range=1.0)
    monai_ssim = SSIMLoss(spatial_dims=2, data_range=1.0)(prediction, target).item()
    assert joint.ssim_loss(prediction, target).item() == pytest.approx(monai_ssim, abs=1e-6)
    expected = 10 * edge_weighted_l2(prediction, target) + 5 * monai_ssim + 0.5 * total_variation(prediction)
    assert joint(prediction, target).item() == pytest.approx(expected.item(), rel=1e-5)
    # a perfect prediction leaves only the TV term
    assert joint(target, target).item() == pytest.approx(0.5 * total_variation(target).item(), abs=1e-5)
    weighted = SynNetJointLoss(weighted_ssim=True)
    assert weighted.ssim_loss(target, target).item() == pytest.approx(0.0, abs=1e-5)
    assert 0 < weighted.ssim_loss(prediction, target).item() < 2
    with pytest.raises(ValueError, match="kind|unknown"):
        SynNetJointLoss("l1")
    with pytest.raises(ValueError, match="11"):
        joint(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8))


# --- cae3d cost ----------------------------------------------------------------------------------------------------


def test_cae3d_cost_adds_each_channels_ssim_at_its_own_range_to_the_mse():
    torch.manual_seed(0)
    ranges = (1.0, 3.0)
    target = torch.rand(2, 2, 16, 16, 16) * torch.tensor(ranges).reshape(1, 2, 1, 1, 1)
    prediction = target + 0.2 * torch.randn_like(target)
    mse = F.mse_loss(prediction, target).item()
    assert PatchMSEWithSSIM(ranges)(prediction, target).item() == pytest.approx(mse)
    ssims = [SSIMLoss(spatial_dims=3, data_range=r)(prediction[:, c:c + 1], target[:, c:c + 1]).item()
             for c, r in enumerate(ranges)]
    cost = PatchMSEWithSSIM(ranges, ssim_weight=0.5)
    assert cost(prediction, target).item() == pytest.approx(mse + 0.5 * sum(ssims) / 2, rel=1e-5)
    assert PatchMSEWithSSIM(ranges[::-1], 0.5)(prediction, target).item() != pytest.approx(
        cost(prediction, target).item(), rel=1e-3)
    assert cost(target, target).item() == pytest.approx(0.0, abs=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = cost(prediction, target)
    assert under_autocast.dtype == torch.float32
    assert under_autocast.item() == pytest.approx(cost(prediction, target).item(), rel=1e-6)
    with pytest.raises(ValueError, match="ssim_weight"):
        PatchMSEWithSSIM([1.0], ssim_weight=-0.1)
    with pytest.raises(ValueError, match="data ranges"):
        PatchMSEWithSSIM([0.0], ssim_weight=0.1)
    with pytest.raises(ValueError, match="shapes"):
        cost(prediction[:, :1], target[:, :1])
    with pytest.raises(ValueError, match="11"):
        PatchMSEWithSSIM([1.0], 0.1)(torch.rand(1, 1, 8, 8, 8), torch.rand(1, 1, 8, 8, 8))


# --- learning checks: 20 Adam steps on a tiny fixed batch ---------------------------------------------------------


def _train(model, step_loss, steps=20, lr=1e-3):
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        optimiser.zero_grad()
        loss = step_loss()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    return losses


def test_multimodal_learns():
    net = MultimodalSynthesisNet(["T1", "T2"], ["FLAIR"])
    images = _images(["T1", "T2"], batch=2, size=16)
    target = {"FLAIR": 0.5 * images["T1"] + images["T2"] ** 2}
    loss = MultimodalSynthesisLoss()
    losses = _train(net, lambda: loss(net(images), target), lr=1e-3)
    assert losses[-1] < 0.6 * losses[0], losses  # about 0.45 over seeds 0-3


def test_synnet_joint_loss_learns():
    net = SynNet(2, 1, features=8, depth=2)
    x = torch.rand(2, 2, 24, 24)
    target = F.avg_pool2d(x[:, :1] * x[:, 1:], 3, stride=1, padding=1)
    loss = SynNetJointLoss(data_range=1.0)
    losses = _train(net, lambda: loss(net(x), target), lr=1e-2)
    assert losses[-1] < 0.5 * losses[0], losses


def test_cae3d_learns():
    net = ConvAutoencoder3D(features=4)
    x = torch.rand(2, 1, 30, 30, 30)
    target = 1.0 - x[:, :, 11:-11, 11:-11, 11:-11]
    losses = _train(net, lambda: F.mse_loss(net(x), target), lr=1e-2)
    assert losses[-1] < 0.5 * losses[0], losses
