"""Post-processing from probability maps to TuSimple lanes."""

import torch

from lanex_trainer.evaluation.postprocess import PostprocessSettings, lanes_from_probabilities

H_SAMPLES = list(range(160, 720, 10))


def _maps(height=72, width=200, lanes=((1, 50), (3, 150))):
    seg = torch.zeros(1, 5, height, width)
    seg[:, 0] = 1.0
    for slot, column in lanes:
        seg[0, 0, height // 4:, column] = 0.0
        seg[0, slot, height // 4:, column] = 1.0
    return seg


def test_vertical_lanes_are_found_at_their_column_scaled_to_1280():
    seg = _maps()
    exist = torch.tensor([[0.9, 0.1, 0.9, 0.1]])
    lanes = lanes_from_probabilities(seg, exist, [H_SAMPLES], PostprocessSettings(blur=False))[0]
    assert len(lanes) == 2
    expected = [round((50 + 0.5) * 1280 / 200 - 0.5), round((150 + 0.5) * 1280 / 200 - 0.5)]
    for lane, x in zip(lanes, expected):
        present = [v for v in lane if v != -2]
        assert present and all(abs(v - x) <= 1 for v in present)
        assert lane[0] == -2  # row 160 maps above the painted part (top quarter empty)


def test_absent_lanes_and_lanes_with_one_point_are_dropped():
    seg = _maps()
    exist = torch.tensor([[0.4, 0.9, 0.9, 0.9]])  # slot 1 below threshold; 2 and 4 have no pixels
    lanes = lanes_from_probabilities(seg, exist, [H_SAMPLES], PostprocessSettings(blur=False))[0]
    assert len(lanes) == 1 and len(lanes[0]) == len(H_SAMPLES)


def test_each_image_uses_its_own_h_samples():
    seg = _maps().repeat(2, 1, 1, 1)
    exist = torch.full((2, 4), 0.9)
    other = list(range(240, 720, 10))
    lanes = lanes_from_probabilities(seg, exist, [H_SAMPLES, other], PostprocessSettings())
    assert len(lanes[0][0]) == len(H_SAMPLES) and len(lanes[1][0]) == len(other)


def test_per_image_losses_do_not_depend_on_batching():
    from lanex_trainer.losses import SCNNLoss

    torch.manual_seed(0)
    seg, exist = torch.randn(4, 5, 8, 10), torch.randn(4, 4)
    target, exist_target = torch.randint(0, 5, (4, 8, 10)), torch.randint(0, 2, (4, 4)).float()
    criterion = SCNNLoss()
    whole = criterion.per_image(seg, exist, target, exist_target)
    halves = torch.cat([criterion.per_image(seg[i:i + 2], exist[i:i + 2], target[i:i + 2], exist_target[i:i + 2])
                        for i in (0, 2)])
    assert torch.allclose(whole, halves, atol=0, rtol=1e-6)
    single = criterion(seg[:1], exist[:1], target[:1], exist_target[:1]).total
    assert torch.allclose(whole[0], single, rtol=1e-6)
