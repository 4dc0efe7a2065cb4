"""FD_DINOv2's preprocessing and position grid as EDM2's detector has them (timm itself is optional)."""

import pytest
import torch
import torch.nn.functional as F

from pynodeta.metrics import DINOv2FeatureExtractor, dinov2_position_embedding, edm2_dinov2_pixels


def test_pixels_are_resized_to_224_then_imagenet_normalised():
    images = torch.full((2, 3, 40, 56), 200, dtype=torch.uint8)
    images[:, 1] = 51
    x = edm2_dinov2_pixels(images)
    assert x.shape == (2, 3, 224, 224) and x.dtype == torch.float32
    expected = torch.tensor([(200 / 255 - 0.485) / 0.229, (51 / 255 - 0.456) / 0.224, (200 / 255 - 0.406) / 0.225])
    torch.testing.assert_close(x[0, :, 100, 100], expected)  # a constant image stays constant through bicubic
    edges = torch.zeros(1, 3, 32, 32, dtype=torch.uint8)
    edges[..., 16:] = 255
    overshoot = edm2_dinov2_pixels(edges) * 0.229 + 0.485
    assert overshoot[0, 0].max() > 1.0 and overshoot[0, 0].min() < 0.0  # bicubic rings and is not clamped, as EDM2's


def test_position_grid_is_resampled_the_hub_way():
    generator = torch.Generator().manual_seed(0)
    pos_embed = torch.randn(1, 1 + 37 * 37, 8, generator=generator)
    resampled = dinov2_position_embedding(pos_embed)
    assert resampled.shape == (1, 1 + 16 * 16, 8)
    torch.testing.assert_close(resampled[:, 0], pos_embed[:, 0])  # the class token's embedding is not a grid point
    grid = pos_embed[:, 1:].reshape(1, 37, 37, 8).permute(0, 3, 1, 2)
    by_size = F.interpolate(grid, size=(16, 16), mode="bicubic", antialias=False).permute(0, 2, 3, 1).reshape(1, -1, 8)
    by_scale = F.interpolate(grid, scale_factor=16.1 / 37, mode="bicubic").permute(0, 2, 3, 1).reshape(1, -1, 8)
    torch.testing.assert_close(resampled[:, 1:], by_scale)  # scale (16 + 0.1)/37 sets the sampling positions ...
    assert (resampled[:, 1:] - by_size).abs().max() > 1e-2  # ... which differ from a plain resize to 16×16
    constant = torch.ones(1, 1 + 37 * 37, 2)
    torch.testing.assert_close(dinov2_position_embedding(constant), torch.ones(1, 257, 2))
    assert dinov2_position_embedding(resampled) is resampled  # already 16×16
    with pytest.raises(ValueError, match=r"\(1, 1 \+ M²"):
        dinov2_position_embedding(torch.zeros(1, 1 + 10, 8))


def test_extractor_names_the_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="dinov2_vitl14_pretrain.pth"):
        DINOv2FeatureExtractor(tmp_path / "missing.pth")


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_timm_model_gets_the_hub_position_grid(tmp_path):
    timm = pytest.importorskip("timm")
    original = timm.create_model("vit_large_patch14_dinov2", pretrained=False, num_classes=0)  # 518: 37×37 grid
    torch.save(original.state_dict(), tmp_path / "dinov2.pth")
    extractor = DINOv2FeatureExtractor(tmp_path / "dinov2.pth")
    torch.testing.assert_close(extractor.model.pos_embed, dinov2_position_embedding(original.pos_embed.detach()))
    features = extractor(torch.rand(1, 3, 20, 20) * 2 - 1)
    assert features.shape == (1, 1024) and torch.isfinite(features).all()
