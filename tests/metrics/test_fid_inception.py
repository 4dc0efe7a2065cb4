"""Our FID Inception-v3 against pytorch-fid's: parameter names, the weights file, and the features themselves."""

import json

import numpy as np
import pytest
import torch

from pynodeta.metrics import FIDInceptionV3

from .pytorch_fid_reference import FEATURES_FILE, KEYS_FILE, pytorch_fid_network, random_fid_state, reference_inputs


def _shapes():
    return json.loads(KEYS_FILE.read_text())


def test_state_dict_has_pytorch_fids_names_and_shapes():
    ours = {key: list(value.shape) for key, value in FIDInceptionV3().state_dict().items()}
    assert ours == _shapes()


@torch.no_grad()
def test_features_equal_pytorch_fids_recorded_features():
    """Weights drawn from pytorch-fid's key list; features recorded from pytorch-fid's own model with them."""
    network = FIDInceptionV3()
    network.load_state_dict(random_fid_state(_shapes()), strict=True)
    network.eval()
    recorded = np.load(FEATURES_FILE)
    for name, images in reference_inputs().items():
        features = network(images).numpy()
        assert features.shape == (len(images), 2048)
        np.testing.assert_allclose(features, recorded[name], rtol=1e-4, atol=1e-4 * np.abs(recorded[name]).max())


@torch.no_grad()
def test_features_equal_pytorch_fid_live():
    pytest.importorskip("pytorch_fid")
    state = random_fid_state(_shapes())
    theirs = pytorch_fid_network(state)
    ours = FIDInceptionV3()
    ours.load_state_dict(state, strict=True)
    ours.eval()
    for images in reference_inputs().values():
        torch.testing.assert_close(ours(images), theirs(images)[0].flatten(1), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("zipped", [True, False])  # pytorch-fid's 2019 file predates the zip format
def test_weights_file_loads_strictly_with_weights_only(tmp_path, zipped):
    state = random_fid_state(_shapes())
    state = {key: value for key, value in state.items() if not key.endswith("num_batches_tracked")}  # as old files
    path = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(state, path, _use_new_zipfile_serialization=zipped)
    network = FIDInceptionV3.from_weights(path)
    assert not network.training
    torch.testing.assert_close(network.Mixed_7c.branch_pool.conv.weight, state["Mixed_7c.branch_pool.conv.weight"])


def test_weights_file_with_other_keys_is_refused(tmp_path):
    state = random_fid_state(_shapes())
    del state["Mixed_6e.branch7x7dbl_3.bn.running_var"]
    path = tmp_path / "inception.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"weights_path .*inception.pth.*running_var.*pt_inception-2015-12-05"):
        FIDInceptionV3.from_weights(path)
    torch.save([torch.zeros(1)], path)
    with pytest.raises(ValueError, match="not a state dict"):
        FIDInceptionV3.from_weights(path)


class _NVlabsInterface(torch.nn.Module):
    """Our network behind NVlabs' detector interface (uint8 RGB in), to be saved as TorchScript as NVlabs' is."""

    def __init__(self, network):
        super().__init__()
        self.network = network

    def forward(self, images: torch.Tensor, return_features: bool = True) -> torch.Tensor:
        return self.network(images.float() / 255)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch 2.13 deprecates torch.jit, which NVlabs' file is
@torch.no_grad()
def test_extractor_reads_the_pth_and_agrees_with_the_same_weights_as_torchscript(tmp_path):
    from pynodeta.metrics import InceptionFeatureExtractor

    state = random_fid_state(_shapes())
    torch.save(state, tmp_path / "pt_inception.pth")
    network = FIDInceptionV3()
    network.load_state_dict(state)
    network.eval()
    images = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(3)) * 2 - 1  # [-1, 1]
    from_state_dict = InceptionFeatureExtractor(tmp_path / "pt_inception.pth")(images)
    pixels = ((images + 1) * 127.5).round() / 255  # the extractor's uint8 step, as pytorch-fid reads a PNG
    torch.testing.assert_close(from_state_dict, network(pixels), rtol=0, atol=0)
    traced = torch.jit.trace(network, (torch.zeros(1, 3, 16, 16),))  # scripted around it: NVlabs' signature
    torch.jit.save(torch.jit.script(_NVlabsInterface(traced)), str(tmp_path / "inception.pt"))
    from_torchscript = InceptionFeatureExtractor(tmp_path / "inception.pt")(images)
    torch.testing.assert_close(from_torchscript, from_state_dict, rtol=1e-5, atol=1e-5)
