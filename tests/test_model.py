"""SCNN model: shapes, exact message passing, sequential propagation, weights loading, raw logits."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lanex_trainer.model.backbones import PretrainedWeightsError
from lanex_trainer.model.message_passing import MessagePassing
from lanex_trainer.model.scnn import SCNN, build_model


def naive_message_passing(x: torch.Tensor, module: MessagePassing) -> torch.Tensor:
    """Slice by slice, as the paper describes it: slice i += relu(conv(new slice i-1))."""

    def sweep(x: torch.Tensor, conv: nn.Conv2d, dim: int, reverse: bool) -> torch.Tensor:
        slices = list(x.split(1, dim=dim))
        steps = range(len(slices) - 2, -1, -1) if reverse else range(1, len(slices))
        for i in steps:
            previous = slices[i + 1] if reverse else slices[i - 1]
            slices[i] = slices[i] + F.relu(F.conv2d(previous, conv.weight, padding=conv.padding))
        return torch.cat(slices, dim=dim)

    x = sweep(x, module.top_to_bottom, 2, reverse=False)
    x = sweep(x, module.bottom_to_top, 2, reverse=True)
    x = sweep(x, module.left_to_right, 3, reverse=False)
    return sweep(x, module.right_to_left, 3, reverse=True)


def grads_of(forward, module: MessagePassing, x: torch.Tensor, weight: torch.Tensor) -> list[torch.Tensor]:
    x = x.detach().clone().requires_grad_(True)
    module.zero_grad(set_to_none=True)
    out = forward(x)
    (out * weight).sum().backward()
    return [out.detach(), x.grad] + [conv.weight.grad for conv in module.sweeps()]


@pytest.mark.parametrize(
    ("backbone", "size", "batch"),
    [("small", (64, 160), 2), ("small", (96, 128), 1), ("resnet18", (64, 128), 2), ("vgg16_bn", (32, 64), 1)],
)
def test_scnn_returns_full_resolution_segmentation_and_per_lane_existence(backbone, size, batch):
    model = build_model(backbone, input_size=size, num_lanes=4).eval()
    with torch.no_grad():
        seg_logits, exist_logits = model(torch.randn(batch, 3, *size))
    assert isinstance(model, SCNN)
    assert seg_logits.shape == (batch, 5, *size)
    assert exist_logits.shape == (batch, 4)
    assert torch.isfinite(seg_logits).all() and torch.isfinite(exist_logits).all()


def test_vgg16_bn_backbone_is_dilated_at_output_stride_8():
    model = build_model("vgg16_bn", input_size=(32, 64))
    pools = [m for m in model.backbone.modules() if isinstance(m, nn.MaxPool2d)]
    convs = [m for m in model.backbone.modules() if isinstance(m, nn.Conv2d)]
    assert len(pools) == 3 and len(convs) == 13
    assert [c.dilation for c in convs[-3:]] == [(2, 2)] * 3 and [c.padding for c in convs[-3:]] == [(2, 2)] * 3
    assert all(c.dilation == (1, 1) for c in convs[:-3])
    with torch.no_grad():
        assert model.backbone.eval()(torch.zeros(1, 3, 32, 64)).shape == (1, 512, 4, 8)
    neck_conv = model.neck[0]
    assert (neck_conv.in_channels, neck_conv.out_channels, neck_conv.dilation) == (512, 1024, (4, 4))
    assert model.message_passing.channels == 128


def test_channels_last_forward_matches_contiguous_forward():
    model = build_model("small", input_size=(48, 96)).eval()
    images = torch.randn(2, 3, 48, 96)
    with torch.no_grad():
        seg, exist = model(images)
        model_cl = model.to(memory_format=torch.channels_last)
        seg_cl, exist_cl = model_cl(images.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(seg_cl, seg, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(exist_cl, exist, rtol=1e-4, atol=1e-4)


def test_a_training_step_sends_gradients_to_every_parameter_and_lowers_the_loss():
    torch.manual_seed(0)
    model = build_model("small", input_size=(32, 64)).train()
    images = torch.randn(4, 3, 32, 64)
    # Four vertical "lanes" the images show in their red channel: a target the net can learn.
    labels = torch.zeros(4, 32, 64, dtype=torch.long)
    for lane in range(4):
        labels[:, :, 6 + 14 * lane : 10 + 14 * lane] = lane + 1
    images[:, 0] += (labels > 0).float() * 2
    exists = torch.randint(0, 2, (4, 4)).float()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    def loss_value() -> torch.Tensor:
        seg_logits, exist_logits = model(images)
        return F.cross_entropy(seg_logits, labels) + 0.1 * F.binary_cross_entropy_with_logits(exist_logits, exists)

    first = loss_value()
    first.backward()
    silent = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert silent == []
    for _ in range(15):
        optimizer.step()
        optimizer.zero_grad()
        last = loss_value()
        last.backward()
    assert last.item() < 0.7 * first.item()


@pytest.mark.parametrize("kernel", [3, 9])
def test_message_passing_equals_slice_by_slice_reference_in_value_and_gradients(kernel):
    torch.manual_seed(0)
    module = MessagePassing(channels=6, kernel=kernel).double()
    x = torch.randn(2, 6, 7, 11, dtype=torch.float64)
    weight = torch.randn(2, 6, 7, 11, dtype=torch.float64)
    want = grads_of(lambda t: naive_message_passing(t, module), module, x, weight)
    got = grads_of(module, module, x, weight)
    for name, g, w in zip(["output", "d_input", "d_t2b", "d_b2t", "d_l2r", "d_r2l"], got, want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10, msg=lambda m, n=name: f"{n}: {m}")
    # The sweeps really did something: the output differs from the input.
    assert (want[0] - x).abs().max() > 0.1


def test_message_passing_float32_and_channels_last_match_reference():
    torch.manual_seed(1)
    module = MessagePassing(channels=16, kernel=9)
    x = torch.randn(2, 16, 9, 20).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        got = module(x)
        want = naive_message_passing(x.contiguous(), module)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert got.is_contiguous(memory_format=torch.channels_last)


def test_message_passing_holds_its_four_convolutions_in_sweep_order():
    module = MessagePassing(channels=8, kernel=9)
    names = [name for name, _ in module.named_children()]
    assert names == ["top_to_bottom", "bottom_to_top", "left_to_right", "right_to_left"]
    assert list(module.sweeps()) == [module.top_to_bottom, module.bottom_to_top, module.left_to_right, module.right_to_left]
    shapes = [tuple(conv.weight.shape) for conv in module.sweeps()]
    assert shapes == [(8, 8, 1, 9), (8, 8, 1, 9), (8, 8, 9, 1), (8, 8, 9, 1)]
    assert [conv.padding for conv in module.sweeps()] == [(0, 4), (0, 4), (4, 0), (4, 0)]
    assert all(conv.bias is None for conv in module.sweeps())


def _only_sweep(module: MessagePassing, active: nn.Conv2d) -> None:
    with torch.no_grad():
        for conv in module.sweeps():
            conv.weight.fill_(0.02 if conv is active else 0.0)


def test_lane_signal_in_the_top_row_reaches_the_bottom_row():
    module = MessagePassing(channels=4, kernel=9)
    _only_sweep(module, module.top_to_bottom)
    x = torch.zeros(1, 4, 12, 10)
    x[:, :, 0] = 1.0
    with torch.no_grad():
        out = module(x)
    # Sequential: row i is fed by the *updated* row i-1, so the signal crosses all 12 rows.
    assert (out[:, :, -1] > 0).all()
    row_energy = out.sum(dim=(0, 1, 3))
    assert (row_energy[1:] > 0).all()


def test_lane_signal_in_the_bottom_row_and_left_column_travels_up_and_right():
    module = MessagePassing(channels=4, kernel=9)
    _only_sweep(module, module.bottom_to_top)
    x = torch.zeros(1, 4, 12, 10)
    x[:, :, -1] = 1.0
    with torch.no_grad():
        assert (module(x)[:, :, 0] > 0).all()
    _only_sweep(module, module.left_to_right)
    x = torch.zeros(1, 4, 12, 10)
    x[:, :, :, 0] = 1.0
    with torch.no_grad():
        out = module(x)
    assert (out[:, :, :, -1] > 0).all()
    assert torch.count_nonzero(out[:, :, :, 1:]) == out[:, :, :, 1:].numel()


def test_message_passing_at_init_keeps_activations_at_input_scale():
    torch.manual_seed(0)
    module = MessagePassing(channels=32, kernel=9)
    x = torch.relu(torch.randn(2, 32, 36, 100))
    with torch.no_grad():
        out = module(x)
    assert out.std() < 4 * x.std()


def test_message_passing_under_autocast_keeps_float32_weight_gradients():
    module = MessagePassing(channels=8, kernel=9)
    x = torch.randn(1, 8, 6, 10, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = module(x.to(torch.bfloat16))
    out.float().sum().backward()
    assert all(conv.weight.grad.dtype == torch.float32 for conv in module.sweeps())
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_message_passing_under_bf16_autocast_sweeps_in_float32_without_drift():
    """A bf16 sweep drifts (weight gradients ~6 % off float32); lanex sweeps in float32 under autocast,
    so it differs from float32 on the same bf16-rounded input only by rounding its output and incoming gradient."""
    torch.manual_seed(0)
    module = MessagePassing(channels=32, kernel=9)
    x = torch.relu(torch.randn(2, 32, 18, 50)).to(torch.bfloat16)
    upstream = torch.randn(2, 32, 18, 50)

    def run(inputs, autocast: bool):
        inputs = inputs.detach().clone().requires_grad_(True)
        module.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = module(inputs)
        (out.float() * upstream).sum().backward()
        return [out.detach().float(), inputs.grad.float()] + [conv.weight.grad for conv in module.sweeps()]

    reference = run(x.float(), autocast=False)
    mixed = run(x, autocast=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert module(x).dtype == torch.bfloat16  # handed back in the dtype it came in
    for got, want in zip(mixed, reference):
        assert ((got - want).norm() / want.norm()).item() < 1e-2


def test_message_passing_rejects_wrong_channels_and_even_kernels():
    with pytest.raises(ValueError, match="odd"):
        MessagePassing(channels=8, kernel=8)
    with pytest.raises(ValueError, match=r"\[B, 8, H, W\]"):
        MessagePassing(channels=8)(torch.zeros(1, 4, 5, 5))


@pytest.mark.parametrize("size", [(290, 800), (288, 804), (0, 800)])
def test_build_model_rejects_sizes_that_are_not_multiples_of_16(size):
    with pytest.raises(ValueError, match="multiple of 16") as error:
        build_model("small", input_size=size)
    assert str(size) in str(error.value)


def test_model_rejects_an_input_of_another_size_than_it_was_built_for():
    model = build_model("small", input_size=(32, 64))
    with pytest.raises(ValueError, match=r"built for input_size \(32, 64\).*48x64"):
        model(torch.zeros(1, 3, 48, 64))


def test_unknown_backbone_is_named_in_the_error():
    with pytest.raises(ValueError, match="unknown backbone 'vgg19'"):
        build_model("vgg19", input_size=(32, 64))


def test_existence_logits_are_raw_not_sigmoid():
    model = build_model("small", input_size=(32, 64)).eval()
    bias = torch.tensor([-2.5, -0.5, 1.5, 4.0])
    with torch.no_grad():
        model.exist_head[-1].weight.zero_()
        model.exist_head[-1].bias.copy_(bias)
        _, exist_logits = model(torch.randn(3, 3, 32, 64))
    assert torch.equal(exist_logits, bias.expand(3, 4))
    assert exist_logits.min() < 0 and exist_logits.max() > 1


def test_pretrained_vgg16_bn_state_dict_lands_in_the_dilated_backbone(tmp_path):
    import torchvision

    torch.manual_seed(3)
    reference = torchvision.models.vgg16_bn(weights=None)
    state = reference.state_dict()
    # The real file also holds the classifier; keep its last layer to show it is ignored (and the file small).
    saved = {k: v for k, v in state.items() if k.startswith("features.") or k.startswith("classifier.6.")}
    for key, value in saved.items():
        if key.endswith("running_mean") or key.endswith("running_var"):
            value.uniform_(0.5, 1.5)  # non-default statistics, so a skipped buffer would show
    path = tmp_path / "vgg16_bn-test.pth"
    torch.save(saved, path)

    model = build_model("vgg16_bn", input_size=(32, 64), pretrained_weights=path)
    ours = [m for m in model.backbone.modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))]
    theirs = [(i, m) for i, m in enumerate(reference.features) if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))]
    assert len(ours) == len(theirs) == 26
    for mine, (index, ref) in zip(ours, theirs):
        for name in ref.state_dict():
            assert torch.equal(mine.state_dict()[name], saved[f"features.{index}.{name}"]), f"features.{index}.{name}"
    fresh = build_model("vgg16_bn", input_size=(32, 64))
    assert not torch.equal(fresh.backbone[0].weight, model.backbone[0].weight)


def test_missing_pretrained_file_is_an_error_naming_it(tmp_path):
    missing = tmp_path / "nowhere" / "vgg16_bn-0000.pth"
    with pytest.raises(PretrainedWeightsError, match="vgg16_bn-0000.pth does not exist"):
        build_model("vgg16_bn", input_size=(32, 64), pretrained_weights=missing)


def test_weights_in_the_torch_hub_cache_are_not_loaded_unless_asked(tmp_path, monkeypatch):
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "vgg16_bn-b7a0e4a3.pth").write_bytes(b"not a state dict; loading it would fail")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    model = build_model("vgg16_bn", input_size=(32, 64))
    assert model.backbone[0].weight.abs().sum() > 0


def test_pretrained_file_of_another_network_is_rejected_with_the_missing_keys(tmp_path):
    path = tmp_path / "not-vgg.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, path)
    with pytest.raises(PretrainedWeightsError, match=r"not-vgg.pth lacks key features.0.weight \(expected shape \(64, 3, 3, 3\)\)"):
        build_model("vgg16_bn", input_size=(32, 64), pretrained_weights=path)
    with pytest.raises(PretrainedWeightsError, match="'small' has no pretrained weights"):
        build_model("small", input_size=(32, 64), pretrained_weights=path)


def test_importing_the_cli_does_not_import_torch():
    code = "import sys, lanex_trainer, lanex_trainer.cli; sys.exit(1 if 'torch' in sys.modules else 0)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr or "torch was imported by lanex_trainer.cli"


def _torchvision_file(tmp_path, name: str, keep=lambda key: True):
    """A state dict in torchvision's published layout: the 2017 files predate BatchNorm's
    num_batches_tracked buffer and use torch's legacy (pre-zip) serialization."""
    import torchvision

    torch.manual_seed(5)
    network = getattr(torchvision.models, name)(weights=None)
    state = {k: v for k, v in network.state_dict().items() if not k.endswith("num_batches_tracked") and keep(k)}
    for key, value in state.items():
        if key.endswith("running_var"):
            value.uniform_(0.5, 1.5)  # non-default statistics, so a skipped buffer would show
    path = tmp_path / f"{name}-legacy.pth"
    torch.save(state, path, _use_new_zipfile_serialization=False)
    return path, state


@pytest.mark.parametrize("name", ["vgg16_bn", "resnet18"])
def test_torchvision_legacy_layout_without_num_batches_tracked_loads(tmp_path, name):
    path, state = _torchvision_file(tmp_path, name, keep=lambda k: not k.startswith("classifier."))
    model = build_model(name, input_size=(32, 64), pretrained_weights=path)
    first_bn = next(m for m in model.backbone.modules() if isinstance(m, nn.BatchNorm2d))
    expected_key = "features.1.running_var" if name == "vgg16_bn" else "bn1.running_var"
    assert torch.equal(first_bn.running_var, state[expected_key])
    first_conv = next(m for m in model.backbone.modules() if isinstance(m, nn.Conv2d))
    assert torch.equal(first_conv.weight, state["features.0.weight" if name == "vgg16_bn" else "conv1.weight"])


def test_weights_file_with_a_wrong_shape_names_the_first_mismatching_key(tmp_path):
    path, state = _torchvision_file(tmp_path, "resnet18")
    state["layer1.0.conv2.weight"] = torch.zeros(64, 64, 1, 1)
    torch.save(state, path)
    with pytest.raises(PretrainedWeightsError, match=r"resnet18-legacy.pth: key layer1.0.conv2.weight has shape "
                       r"\(64, 64, 1, 1\), the backbone needs \(64, 64, 3, 3\)"):
        build_model("resnet18", input_size=(32, 64), pretrained_weights=path)


def test_resnet18_weights_given_to_vgg16_bn_are_rejected_naming_the_first_missing_key(tmp_path):
    path, _ = _torchvision_file(tmp_path, "resnet18")
    with pytest.raises(PretrainedWeightsError, match=r"resnet18-legacy.pth lacks key features.0.weight"):
        build_model("vgg16_bn", input_size=(32, 64), pretrained_weights=path)


def test_corrupt_weights_file_is_an_error_naming_it(tmp_path):
    path, _ = _torchvision_file(tmp_path, "resnet18")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(PretrainedWeightsError, match=r"resnet18-legacy.pth could not be read"):
        build_model("resnet18", input_size=(32, 64), pretrained_weights=path)


def test_training_vgg16_bn_without_weights_warns_that_it_trains_from_scratch(caplog, tmp_path):
    from lanex_trainer.model.backbones import warn_if_from_scratch

    with caplog.at_level("WARNING", logger="lanex_trainer.model.backbones"):
        assert warn_if_from_scratch("vgg16_bn", None)
    assert any("no pretrained weights given, training from random initialisation" in r.message for r in caplog.records)
    caplog.clear()
    with caplog.at_level("WARNING", logger="lanex_trainer.model.backbones"):
        assert not warn_if_from_scratch("small", None)
        assert not warn_if_from_scratch("vgg16_bn", tmp_path / "vgg16_bn-6c64b313.pth")
        build_model("vgg16_bn", input_size=(32, 64))  # building to load a checkpoint into: no warning
    assert not caplog.records


@pytest.mark.parametrize(("backbone", "size"), [("small", (144, 400)), ("resnet18", (288, 512)), ("vgg16_bn", (288, 800))])
def test_initial_loss_is_near_that_of_uniform_predictions_not_saturated(backbone, size):
    """At step 0 the 5-way segmentation is not saturated: its loss is of the order of ln 5 (1.61, uniform
    predictions; up to ~3.6 with PyTorch's default head init), not ~24 as with Kaiming fan-out on the
    5-output head (logit std ~14 on vgg16_bn)."""
    import math

    from lanex_trainer.losses import SCNNLoss

    torch.manual_seed(0)
    model = build_model(backbone, input_size=size).train()
    images = torch.randn(2, 3, *size)
    seg = torch.zeros(2, *size, dtype=torch.long)
    seg[:, :, size[1] // 4 : size[1] // 4 + 8] = 1
    seg[:, :, size[1] // 2 : size[1] // 2 + 8] = 3
    exist = torch.tensor([[1.0, 0.0, 1.0, 0.0]] * 2)
    with torch.no_grad():
        seg_logits, exist_logits = model(images)
    loss = SCNNLoss()(seg_logits, exist_logits, seg, exist)
    assert seg_logits.std() < 3.0
    assert 0.25 * math.log(5) < loss.segmentation.item() < 2.5 * math.log(5)
    assert abs(loss.existence.item() - math.log(2)) < 0.35
