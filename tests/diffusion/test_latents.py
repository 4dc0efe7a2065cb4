"""EDM2's latent convention (NVlabs/edm2 training/encoders.py, StabilityVAEEncoder) around a diffusers AutoencoderKL."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pynodeta.diffusion.latents import (
    EDM2_SD_VAE_SCALING,
    LatentEncoder,
    LatentScaling,
    draw_latents,
    vae_folder,
)

from ..data.latent_fixtures import save_tiny_vae


def test_edm2_constants_scale_and_bias_as_released():
    scaling = EDM2_SD_VAE_SCALING
    raw_mean = np.array([5.81, 3.25, 0.12, -2.15], dtype=np.float32)
    raw_std = np.array([4.17, 4.62, 3.71, 3.28], dtype=np.float32)
    assert scaling.scale.dtype == np.float32 and scaling.bias.dtype == np.float32
    np.testing.assert_array_equal(scaling.scale, np.float32(0.5) / raw_std)
    np.testing.assert_array_equal(scaling.bias, np.float32(0) - raw_mean * (np.float32(0.5) / raw_std))
    # latents at the assumed raw mean +- one raw std land at final mean +- final std
    raw = torch.tensor(raw_mean).reshape(1, 4, 1, 1) + torch.tensor(raw_std).reshape(1, 4, 1, 1) * torch.tensor(
        [-1.0, 0.0, 1.0]).reshape(3, 1, 1, 1)
    final = scaling.scale_latents(raw.expand(3, 4, 2, 2))
    torch.testing.assert_close(final[:, :, 0, 0], torch.tensor([[-0.5] * 4, [0.0] * 4, [0.5] * 4]), atol=1e-6, rtol=0)


def test_scale_then_unscale_is_the_identity():
    x = torch.randn(3, 4, 5, 6, generator=torch.Generator().manual_seed(0)) * 4
    scaling = EDM2_SD_VAE_SCALING
    torch.testing.assert_close(scaling.unscale_latents(scaling.scale_latents(x)), x, atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(scaling.scale_latents(scaling.unscale_latents(x)), x, atol=1e-5, rtol=1e-6)
    assert LatentScaling.from_dict(scaling.to_dict()) == scaling


def test_bad_constants_are_refused_by_name():
    with pytest.raises(ValueError, match="raw_std must be > 0"):
        LatentScaling(raw_mean=(0.0,), raw_std=(0.0,))
    with pytest.raises(ValueError, match="one value per latent channel"):
        LatentScaling(raw_mean=(0.0, 1.0), raw_std=(1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match=r"latents must be \(batch, 4"):
        EDM2_SD_VAE_SCALING.scale_latents(torch.zeros(1, 3, 2, 2))


def test_draw_latents_is_mean_plus_std_noise_then_scaled():
    mean, std = torch.randn(2, 4, 3, 3), torch.rand(2, 4, 3, 3)
    drawn = draw_latents(torch.cat([mean, std], dim=1), EDM2_SD_VAE_SCALING, torch.Generator().manual_seed(5))
    noise = torch.randn(mean.shape, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(drawn, EDM2_SD_VAE_SCALING.scale_latents(mean + std * noise))


def test_encoder_stores_the_vae_posterior_of_pixels_in_0_1_and_decodes_by_inverting_the_scaling(tmp_path):
    pytest.importorskip("diffusers")
    vae = save_tiny_vae(tmp_path / "vae")
    encoder = LatentEncoder(tmp_path / "vae", batch_size=2)
    pixels = torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    raw = encoder.encode_pixels(pixels)
    assert raw.shape == (3, 8, 8, 8) and encoder.downsampling == 2
    with torch.no_grad():
        posterior = vae.encode(pixels.float() / 255).latent_dist  # EDM2: x / 255 into the encoder
    torch.testing.assert_close(raw, torch.cat([posterior.mean, posterior.std], dim=1), atol=1e-5, rtol=1e-5)

    latents = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        expected = vae.decode(EDM2_SD_VAE_SCALING.unscale_latents(latents)).sample.clamp(0, 1).mul(255).to(torch.uint8)
    decoded = encoder.decode(latents)
    assert decoded.dtype == torch.uint8 and decoded.shape == (2, 3, 16, 16)
    assert (decoded.int() - expected.int()).abs().max() <= 1  # float rounding at a quantisation edge
    unit = encoder.decode_to_unit_range(latents)
    torch.testing.assert_close(unit, decoded.float() / 127.5 - 1)


def test_a_vae_folder_without_safetensors_or_config_is_refused(tmp_path):
    pytest.importorskip("diffusers")
    with pytest.raises(ValueError, match="not a saved diffusers AutoencoderKL"):
        vae_folder(tmp_path)
    save_tiny_vae(tmp_path / "pipe" / "vae")
    assert vae_folder(tmp_path / "pipe") == tmp_path / "pipe" / "vae"  # a whole pipeline's folder
    for weights in (tmp_path / "pipe" / "vae").glob("*.safetensors"):
        weights.rename(weights.with_suffix(".bin"))
    with pytest.raises(ValueError, match="no .safetensors weights"):
        vae_folder(tmp_path / "pipe")


def test_constants_for_another_channel_count_are_refused(tmp_path):
    pytest.importorskip("diffusers")
    save_tiny_vae(tmp_path / "vae")
    with pytest.raises(ValueError, match="constants for 3 latent channels but the VAE has 4"):
        LatentEncoder(tmp_path / "vae", LatentScaling(raw_mean=(0.0,) * 3, raw_std=(1.0,) * 3))


def test_a_released_networks_own_encoder_constants_decode_its_latents():
    from types import SimpleNamespace

    import numpy as np

    from pynodeta.diffusion.latents import EDM2_SD_VAE_SCALING
    from pynodeta.train.latent_runs import released_latent_scaling

    # NVlabs' StabilityVAEEncoder stores float32 scale and bias; EDM2's defaults are recognised as such
    default = SimpleNamespace(encoder={"scale": EDM2_SD_VAE_SCALING.scale.tolist(),
                                       "bias": EDM2_SD_VAE_SCALING.bias.tolist()})
    assert released_latent_scaling(default) is EDM2_SD_VAE_SCALING
    raw_mean, raw_std = np.float32([1.0, -2.0, 0.5, 3.0]), np.float32([2.0, 4.0, 1.5, 3.5])
    scale = np.float32(0.5) / raw_std
    other = SimpleNamespace(encoder={"scale": scale.tolist(), "bias": (np.float32(0) - raw_mean * scale).tolist()})
    scaling = released_latent_scaling(other)
    np.testing.assert_allclose(scaling.scale, scale, rtol=1e-6)
    np.testing.assert_allclose(scaling.bias, np.float32(0) - raw_mean * scale, rtol=1e-6, atol=1e-7)
    assert released_latent_scaling(SimpleNamespace(encoder=None)) is None
    assert released_latent_scaling(None) is None
