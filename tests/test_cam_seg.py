"""P33 CAM-Seg: Shapes-Seg masks and palette, segmentation scores, and the image -> mask pipeline."""

import numpy as np
import pytest
import torch

from latentforge.data.shapes import COLORS, SHAPES, SceneGraph, ShapeObject, ShapesConfig, render, sample_scene
from latentforge.data.shapes_seg import CLASSES, PALETTE, class_map, colorize, palette_argmax, sample_segmentation, to_model_input
from latentforge.eval.seg_baseline import ConvSegmenter
from latentforge.eval.segmentation import (
    boundary_band,
    class_iou,
    confusion_matrix,
    mean_iou,
    pixel_accuracy,
    segmentation_scores,
)
from latentforge.generators.cam_seg import CamSeg, train_steps
from latentforge.generators.mar import MARConfig


def test_palette_round_trip_is_exact_and_tolerates_noise():
    _, classes = sample_segmentation(ShapesConfig(), "train", range(16), workers=1)
    masks = to_model_input(colorize(classes))                                        # [16, 3, 32, 32]
    assert torch.equal(palette_argmax(masks), torch.from_numpy(classes).long())
    # palette colours are >= 2 apart on [-1, 1] (RGB cube corners): noise of 0.3 per channel cannot flip one
    noisy = masks + 0.3 * (2 * torch.rand(masks.shape, generator=torch.Generator().manual_seed(0)) - 1)
    assert torch.equal(palette_argmax(noisy), torch.from_numpy(classes).long())
    assert len(set(map(tuple, PALETTE.tolist()))) == len(CLASSES)


def test_masks_agree_with_rendered_objects():
    cfg = ShapesConfig()
    images, classes = sample_segmentation(cfg, "val", range(24), workers=1)
    for i in range(24):
        scene = sample_scene(cfg, "val", i)
        assert np.array_equal(images[i], render(scene, cfg.size, cfg.supersample))   # same scenes
        for obj in scene.objects:
            row, col = int(obj.y * cfg.size), int(obj.x * cfg.size)
            assert classes[i, row, col] == CLASSES.index(obj.shape)
            assert tuple(images[i, row, col]) == COLORS[obj.color]
        # untouched (background-coloured) pixels are background; fully covered (object-coloured) ones are not
        flat = images[i].reshape(-1, 1, 3)
        object_coloured = (flat == np.array(list(COLORS.values()))[None]).all(-1).any(-1).reshape(32, 32)
        assert (classes[i][(images[i] == 48).all(-1)] == 0).all()
        assert (classes[i][object_coloured] > 0).all() and object_coloured.any()


def test_later_objects_are_drawn_over_earlier_ones():
    circle = ShapeObject("circle", "red", "large", 0.5, 0.5)
    square = ShapeObject("square", "blue", "small", 0.5, 0.5)
    on_top = class_map(SceneGraph((circle, square)))
    assert on_top[16, 16] == CLASSES.index("square") and on_top[16, 11] == CLASSES.index("circle")
    assert class_map(SceneGraph((square, circle)))[16, 16] == CLASSES.index("circle")
    assert set(CLASSES[1:]) == set(SHAPES)


def test_scores_on_hand_made_maps():
    target = torch.tensor([[[0, 0, 1, 1], [0, 0, 2, 2]]])                             # [1, 2, 4]
    pred = torch.tensor([[[0, 1, 1, 1], [0, 0, 2, 0]]])
    confusion = confusion_matrix(pred, target, 4)
    assert confusion.tolist() == [[3, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
    assert pixel_accuracy(confusion) == pytest.approx(6 / 8)
    # IoU: class 0 = 3 / (4 + 4 - 3), class 1 = 2 / 3, class 2 = 1 / 2, class 3 absent from both: no IoU
    iou = class_iou(confusion)
    assert iou[:3].tolist() == pytest.approx([3 / 5, 2 / 3, 1 / 2]) and iou[3].isnan()
    assert mean_iou(confusion) == pytest.approx((3 / 5 + 2 / 3 + 1 / 2) / 3)
    assert segmentation_scores(target, target, 4) == {"pixel_acc": 1.0, "miou": 1.0, "boundary_acc": 1.0,
                                                      "boundary_miou": 1.0}
    with pytest.raises(ValueError):
        confusion_matrix(pred, target[:, :1], 4)


def test_boundary_band_marks_the_pixels_next_to_a_class_change():
    target = torch.zeros(1, 5, 6, dtype=torch.long)
    target[0, 1:4, 2:4] = 1                                                          # a 3 x 2 block
    band = boundary_band(target)[0]
    expected = torch.zeros(5, 6, dtype=torch.bool)
    expected[0:5, 1:5] = True                                                        # the block grown by 1
    assert torch.equal(band, expected)
    assert not boundary_band(torch.zeros(1, 4, 4, dtype=torch.long)).any()           # border is not a boundary
    pred = target.clone()
    pred[0, 0, 0] = 1                                                                # off the band: no effect
    scores = segmentation_scores(pred, target, 2)
    assert scores["boundary_acc"] == 1.0 and scores["pixel_acc"] == pytest.approx(29 / 30)


def test_conv_segmenter_learns_shapes_beyond_all_background():
    torch.manual_seed(0)
    images, classes = sample_segmentation(ShapesConfig(), "train", range(64), workers=1)
    x, y = to_model_input(images), torch.from_numpy(classes).long()
    model = ConvSegmenter(len(CLASSES), width=16)
    losses = train_steps(list(model.parameters()), lambda i: model.loss(x[i], y[i]), len(x), 80, 16, 3e-3,
                         torch.Generator().manual_seed(0))
    with torch.no_grad():
        learned = segmentation_scores(model(x).argmax(1), y, len(CLASSES))
    background = segmentation_scores(torch.zeros_like(y), y, len(CLASSES))
    assert losses[-1] < 0.5 * losses[0]
    # all-background has mIoU ~0.22 (one class of four right); the model must find the objects
    assert learned["miou"] > background["miou"] + 0.2


def tiny_cam_seg(channels: int = 2) -> CamSeg:
    mar = MARConfig(grid=(4, 4), channels=channels, dim=32, depth=2, heads=2, head_width=32, head_depth=2)
    return CamSeg(mar, image_channels=3)


def test_image_map_is_aligned_with_the_mask_grid():
    model = tiny_cam_seg().eval()
    z = torch.randn(2, 4, 4, 3)
    model.fit_norms(z, torch.randn(2, 4, 4, 2))
    changed = z.clone()
    changed[:, 1, 2] += 1.0
    diff = (model.context(changed).spatial - model.context(z).spatial).abs().sum(-1)    # [B, N]
    assert (diff[:, 1 * 4 + 2] > 0).all() and diff[:, torch.arange(16) != 6].abs().max() == 0


def test_cam_seg_learns_an_aligned_copy():
    """End-to-end smoke that must learn: mask latents = the image latent's first two channels at the
    same grid position. One pass (steps=1) must then draw them far closer than the data's spread."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    z_image = torch.randn(256, 4, 4, 3, generator=g)
    z_mask = z_image[..., :2].clone()
    model = tiny_cam_seg()
    model.fit_norms(z_image, z_mask)
    losses = train_steps(list(model.parameters()), lambda i: model.loss(z_mask[i], z_image[i]), 256, 150, 32, 3e-3, g)
    assert np.mean(losses[-10:]) < np.mean(losses[:10])
    model.eval()
    sample = model.sample(z_image[:32], generator=torch.Generator().manual_seed(1), head_steps=10)
    assert sample.shape == (32, 4, 4, 2)
    error = (sample - z_mask[:32]).square().mean()
    assert error < 0.35 * z_mask.var()  # ignoring the image gives ~2x the variance
