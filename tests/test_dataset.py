"""The SCNN dataset: decoding, lane slots, segmentation targets, augmentation and its determinism."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from lanex_trainer.data.dataset import DecodeError, LaneDataset, decode_image, reduction_flag
from lanex_trainer.data.labels import assign_slots

H_SAMPLES = list(range(160, 711, 10))
HEIGHT, WIDTH = 144, 400
MEAN = np.array([0.485, 0.456, 0.406]).reshape(3, 1, 1)
STD = np.array([0.229, 0.224, 0.225]).reshape(3, 1, 1)


def lane_xs(bottom_x: float, top_x: float, top_y: int = 280, bottom_y: int = 710) -> list[int]:
    """A straight lane from (bottom_x, bottom_y) up to (top_x, top_y); -2 outside those rows."""
    xs = []
    for y in H_SAMPLES:
        if y < top_y or y > bottom_y:
            xs.append(-2)
        else:
            t = (y - top_y) / (710 - top_y)
            xs.append(int(round(top_x + (bottom_x - top_x) * t)))
    return xs


FAR_LEFT, LEFT, RIGHT, FAR_RIGHT = lane_xs(100, 560), lane_xs(450, 610), lane_xs(830, 670), lane_xs(1180, 720)


def write_scene(path: Path, lanes: list[list[int]], thickness: int = 36) -> None:
    """A dark road with every lane painted bright white exactly along its label points."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.full((720, 1280, 3), (60, 50, 40), np.uint8)
    for lane in lanes:
        points = np.array([(x, y) for x, y in zip(lane, H_SAMPLES) if x >= 0], np.int32)
        cv2.polylines(image, [points.reshape(-1, 1, 2)], False, (255, 255, 255), thickness)
    assert cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, 95])


def entry_for(raw_file: str, lanes: list[list[int]]) -> dict:
    return {"image": raw_file, "raw_file": raw_file, "h_samples": H_SAMPLES, "lanes": lanes, "width": 1280, "height": 720}


@pytest.fixture
def scenes(tmp_path: Path) -> tuple[Path, list[dict]]:
    """Three images: four lanes, three lanes (no far right) and four lanes given in shuffled order."""
    layouts = [
        [FAR_LEFT, LEFT, RIGHT, FAR_RIGHT],
        [LEFT, FAR_LEFT, RIGHT],
        [RIGHT, FAR_RIGHT, LEFT, FAR_LEFT],
    ]
    entries = []
    for number, lanes in enumerate(layouts):
        raw_file = f"clips/0313-1/{number}/20.jpg"
        write_scene(tmp_path / raw_file, lanes)
        entries.append(entry_for(raw_file, lanes))
    return tmp_path, entries


def brightness(image: torch.Tensor) -> np.ndarray:
    """Mean of the de-normalised RGB channels, 0..1, per pixel."""
    return np.clip(image.numpy() * STD + MEAN, 0.0, 1.0).mean(axis=0)


# ---- lane slots ---------------------------------------------------------------------------------


def test_two_lanes_take_the_slots_next_to_the_centre() -> None:
    assert assign_slots([RIGHT, LEFT], H_SAMPLES) == [None, LEFT, RIGHT, None]


def test_three_lanes_fill_left_to_right_from_the_bottom() -> None:
    assert assign_slots([RIGHT, LEFT, FAR_LEFT], H_SAMPLES) == [FAR_LEFT, LEFT, RIGHT, None]
    assert assign_slots([FAR_RIGHT, LEFT, RIGHT], H_SAMPLES) == [None, LEFT, RIGHT, FAR_RIGHT]


def test_four_lanes_in_any_order_get_ids_one_to_four() -> None:
    assert assign_slots([FAR_RIGHT, LEFT, FAR_LEFT, RIGHT], H_SAMPLES) == [FAR_LEFT, LEFT, RIGHT, FAR_RIGHT]


def test_five_lanes_drop_the_one_farthest_from_the_centre() -> None:
    outer_left = lane_xs(-300, 500)  # enters the image from the left edge: bottom-most valid x is small
    lanes = [outer_left, FAR_LEFT, LEFT, RIGHT, FAR_RIGHT]
    assert assign_slots(lanes, H_SAMPLES) == [FAR_LEFT, LEFT, RIGHT, FAR_RIGHT]


def test_side_is_decided_at_the_bottom_most_valid_point_and_short_lanes_are_ignored() -> None:
    # crosses the centre: right of it at the top, left of it at its lowest valid row (600)
    crossing = lane_xs(560, 700, bottom_y=600)
    one_point = [-2] * len(H_SAMPLES)
    one_point[-1] = 640
    on_centre = lane_xs(640, 640)
    assert assign_slots([crossing, one_point, on_centre], H_SAMPLES) == [None, crossing, on_centre, None]
    assert assign_slots([], H_SAMPLES) == [None, None, None, None]


# ---- decoding -----------------------------------------------------------------------------------


def test_reduction_is_the_largest_still_at_least_the_output_size() -> None:
    assert reduction_flag((1280, 720), 288, 800) == (cv2.IMREAD_COLOR, 1)
    assert reduction_flag((1280, 720), 144, 400) == (cv2.IMREAD_REDUCED_COLOR_2, 2)
    assert reduction_flag((1280, 720), 90, 160) == (cv2.IMREAD_REDUCED_COLOR_8, 8)
    assert reduction_flag((1280, 720), 100, 320) == (cv2.IMREAD_REDUCED_COLOR_4, 4)


def test_decode_image_returns_rgb_at_the_requested_size(tmp_path: Path) -> None:
    path = tmp_path / "red.jpg"
    bgr = np.zeros((720, 1280, 3), np.uint8)
    bgr[:, :, 2] = 230  # red in OpenCV's BGR order
    cv2.imwrite(str(path), bgr)

    image = decode_image(path, 144, 400)

    assert image.shape == (144, 400, 3) and image.dtype == np.uint8
    assert image[..., 0].mean() > 200 and image[..., 1].mean() < 30 and image[..., 2].mean() < 30


def test_decode_image_names_the_path_of_a_bad_file(tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.jpg"
    write_scene(truncated, [LEFT])
    truncated.write_bytes(truncated.read_bytes()[:4000])
    not_an_image = tmp_path / "notes.jpg"
    not_an_image.write_text("hello")

    with pytest.raises(DecodeError, match=f"corrupt image {truncated}.*truncated"):
        decode_image(truncated, 144, 400)
    with pytest.raises(DecodeError, match=f"cannot decode image {not_an_image}"):
        decode_image(not_an_image, 144, 400)
    with pytest.raises(DecodeError, match=f"cannot read image {tmp_path / 'absent.jpg'}"):
        decode_image(tmp_path / "absent.jpg", 144, 400)


# ---- items and targets --------------------------------------------------------------------------


def test_item_has_the_documented_shapes_and_types(scenes: tuple[Path, list[dict]]) -> None:
    root, entries = scenes
    item = LaneDataset(entries, root, HEIGHT, WIDTH, augment=True)[1]

    assert item["image"].shape == (3, HEIGHT, WIDTH) and item["image"].dtype == torch.float32
    assert item["seg"].shape == (HEIGHT, WIDTH) and item["seg"].dtype == torch.int64
    assert item["exist"].dtype == torch.float32
    assert item["index"] == 1
    assert set(item["seg"].unique().tolist()) <= {0, 1, 2, 3, 4}
    # ImageNet normalisation, RGB order: the road painted BGR (60, 50, 40) at the middle of the bottom row
    plain = LaneDataset(entries, root, HEIGHT, WIDTH, augment=False)[1]["image"][:, -1, WIDTH // 2]
    expected = (np.array([40, 50, 60]) / 255.0 - MEAN.ravel()) / STD.ravel()
    assert np.allclose(plain.numpy(), expected, atol=0.05)


def test_exist_marks_the_slots_that_have_a_lane(scenes: tuple[Path, list[dict]]) -> None:
    root, entries = scenes
    dataset = LaneDataset(entries, root, HEIGHT, WIDTH, augment=False)

    four, three = dataset[0], dataset[1]

    assert four["exist"].tolist() == [1.0, 1.0, 1.0, 1.0]
    assert three["exist"].tolist() == [1.0, 1.0, 1.0, 0.0]
    assert set(three["seg"].unique().tolist()) == {0, 1, 2, 3}


def test_target_of_each_slot_lies_on_its_label_points(scenes: tuple[Path, list[dict]]) -> None:
    root, entries = scenes
    dataset = LaneDataset(entries, root, HEIGHT, WIDTH, augment=False)
    seg = dataset[2]["seg"].numpy()  # lanes listed in shuffled order in this entry
    expected = {1: FAR_LEFT, 2: LEFT, 3: RIGHT, 4: FAR_RIGHT}

    checked = 0
    for slot, lane in expected.items():
        for x, y in zip(lane, H_SAMPLES):
            if x < 0:
                continue
            row = round((y + 0.5) * HEIGHT / 720 - 0.5)
            columns = np.flatnonzero(seg[row] == slot)
            assert columns.size > 0, f"slot {slot} has no pixel on row {row}"
            assert abs(columns.mean() - ((x + 0.5) * WIDTH / 1280 - 0.5)) < 2.5
            checked += 1
    assert checked == 4 * 44


def test_image_and_target_stay_aligned_under_augmentation(scenes: tuple[Path, list[dict]]) -> None:
    root, entries = scenes
    plain = LaneDataset(entries, root, HEIGHT, WIDTH, augment=False)[0]["seg"]
    dataset = LaneDataset(entries, root, HEIGHT, WIDTH, augment=True, seed=7)

    for epoch in range(3):
        dataset.set_epoch(epoch)
        item = dataset[0]
        lanes = item["seg"].numpy() > 0
        light = brightness(item["image"])
        assert not torch.equal(item["seg"], plain)  # the geometry really changed
        on_lanes = (light[lanes] > 0.55).mean()
        assert on_lanes > 0.98, f"epoch {epoch}: only {on_lanes:.3f} of target pixels are on painted lanes"
        # what a misalignment of 4 or 12 output pixels would score: the check can tell
        assert (light[np.roll(lanes, 4, axis=1)] > 0.55).mean() < 0.9
        assert (light[np.roll(lanes, 12, axis=1)] > 0.55).mean() < 0.4


# ---- determinism --------------------------------------------------------------------------------


def test_same_seed_epoch_and_index_give_the_same_item_and_epochs_differ(scenes: tuple[Path, list[dict]]) -> None:
    root, entries = scenes
    first = LaneDataset(entries, root, HEIGHT, WIDTH, augment=True, seed=5)
    again = LaneDataset(entries, root, HEIGHT, WIDTH, augment=True, seed=5)
    first.set_epoch(2)
    again.set_epoch(2)

    a, b = first[1], again[1]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["seg"], b["seg"])

    again.set_epoch(3)
    c = again[1]
    assert not torch.equal(a["image"], c["image"]) and not torch.equal(a["seg"], c["seg"])
    other_seed = LaneDataset(entries, root, HEIGHT, WIDTH, augment=True, seed=6)
    other_seed.set_epoch(2)
    assert not torch.equal(a["image"], other_seed[1]["image"])


def test_items_do_not_depend_on_loader_workers_and_set_epoch_reaches_persistent_ones(
    scenes: tuple[Path, list[dict]],
) -> None:
    root, entries = scenes
    reference = LaneDataset(entries, root, HEIGHT, WIDTH, augment=True, seed=1)
    dataset = LaneDataset(entries, root, HEIGHT, WIDTH, augment=True, seed=1)
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, num_workers=2, persistent_workers=True, timeout=60)
    for epoch in (0, 1):
        dataset.set_epoch(epoch)
        reference.set_epoch(epoch)
        for batch in loader:
            expected = reference[int(batch["index"])]
            assert torch.equal(batch["image"][0], expected["image"])
            assert torch.equal(batch["seg"][0], expected["seg"])


# ---- horizontal flip ----------------------------------------------------------------------------


def test_horizontal_flip_mirrors_image_and_target_and_swaps_left_and_right_slots(scenes: tuple[Path, list[dict]]) -> None:
    from lanex_trainer.data.dataset import AugmentConfig, random_draw

    root, entries = scenes
    flip_only = AugmentConfig(rotation_deg=0.0, scale=(1.0, 1.0), translate=(0.0, 0.0), brightness=0.0, contrast=0.0,
                              color=0.0, horizontal_flip=True)
    dataset = LaneDataset(entries, root, HEIGHT, WIDTH, augment=True, augment_config=flip_only)
    plain = LaneDataset(entries, root, HEIGHT, WIDTH, augment=False)[1]  # LEFT, FAR_LEFT, RIGHT: slots 1, 2, 3
    flips = []
    for epoch in range(12):
        dataset.set_epoch(epoch)
        flips.append(random_draw(dataset.rng(1), flip_only, WIDTH, HEIGHT).flip)
    assert True in flips and False in flips  # about half the draws flip
    dataset.set_epoch(flips.index(True))
    flipped = dataset[1]

    # Mirrored, the three lanes sit one left and two right of the car: slots 2, 3, 4.
    assert plain["exist"].tolist() == [1.0, 1.0, 1.0, 0.0]
    assert flipped["exist"].tolist() == [0.0, 1.0, 1.0, 1.0]
    swapped = {0: 0, 1: 4, 2: 3, 3: 2, 4: 1}
    expected = np.vectorize(swapped.get)(np.fliplr(plain["seg"].numpy()))
    agree = (flipped["seg"].numpy() == expected)[expected > 0].mean()
    assert agree > 0.95, f"only {agree:.3f} of the mirrored target pixels have the swapped slot"
    assert torch.allclose(flipped["image"], plain["image"].flip(-1), atol=0.15)
    lanes = flipped["seg"].numpy() > 0
    assert (brightness(flipped["image"])[lanes] > 0.55).mean() > 0.98

    dataset.set_epoch(flips.index(False))
    assert torch.equal(dataset[1]["seg"], plain["seg"])
    no_flip = LaneDataset(entries, root, HEIGHT, WIDTH, augment=True,
                          augment_config=AugmentConfig(**{**flip_only.__dict__, "horizontal_flip": False}))
    for epoch in range(12):
        no_flip.set_epoch(epoch)
        assert torch.equal(no_flip[1]["seg"], plain["seg"])
