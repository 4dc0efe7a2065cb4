"""pytorch-fid's FID Inception-v3 with seeded random weights: the reference our network is compared with.

Run where pytorch-fid (and so torchvision) imports, from the repository root, to rewrite the two fixtures:

    python -m tests.metrics.pytorch_fid_reference

``fixtures/pytorch_fid_inception_keys.json``: the state-dict keys and shapes of pytorch-fid's model, in its order;
``fixtures/pytorch_fid_random_features.npz``: pytorch-fid's pool3 features of fixed inputs with the weights
``random_fid_state`` draws from those keys. The tests rebuild the same weights from the same keys and seed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

FIXTURES = Path(__file__).parent / "fixtures"
KEYS_FILE = FIXTURES / "pytorch_fid_inception_keys.json"
FEATURES_FILE = FIXTURES / "pytorch_fid_random_features.npz"


def random_fid_state(shapes: dict[str, list[int]], seed: int = 1234) -> dict[str, torch.Tensor]:
    """Weights for every key (in the given order) that keep activations O(1) through the 94 layers:
    He-scaled convolutions, batch-norm scales and variances in [0.5, 1.5), small shifts and means."""
    generator, state = torch.Generator().manual_seed(seed), {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(0)
        elif key.endswith("conv.weight"):
            state[key] = torch.randn(shape, generator=generator) * (2.0 / float(np.prod(shape[1:]))) ** 0.5
        elif key.endswith(("bn.weight", "running_var")):
            state[key] = torch.rand(shape, generator=generator) + 0.5
        elif key.endswith(("bn.bias", "running_mean")):
            state[key] = torch.randn(shape, generator=generator) * 0.1
        else:  # fc: the logits, unused by the features
            state[key] = torch.randn(shape, generator=generator) * 0.02
    return state


def reference_inputs() -> dict[str, torch.Tensor]:
    """Images in [0, 1]: a non-square size (resized to 299) and a 299×299 one (resize is the identity)."""
    generator = torch.Generator().manual_seed(99)
    return {"small": torch.rand(2, 3, 37, 53, generator=generator),
            "full": torch.rand(1, 3, 299, 299, generator=generator)}


def pytorch_fid_network(state: dict[str, torch.Tensor]):
    """pytorch-fid's ``InceptionV3()`` (block 3, its defaults) built through its own code, loading ``state``
    strictly where it would download the weights."""
    import pytorch_fid.inception as inception

    original = inception.load_state_dict_from_url
    try:
        inception.load_state_dict_from_url = lambda *args, **kwargs: state
        return inception.InceptionV3([3]).eval()
    finally:
        inception.load_state_dict_from_url = original


@torch.no_grad()
def main() -> None:
    import pytorch_fid.inception as inception

    # the torchvision Inception3 that pytorch-fid loads the weights file into (its FID blocks keep these names)
    base = inception._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    shapes = {key: list(value.shape) for key, value in base.state_dict().items()}
    FIXTURES.mkdir(exist_ok=True)
    KEYS_FILE.write_text("{\n" + ",\n".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in shapes.items()) + "\n}\n")
    network = pytorch_fid_network(random_fid_state(shapes))
    features = {name: network(images)[0].flatten(1).numpy() for name, images in reference_inputs().items()}
    np.savez(FEATURES_FILE, **features)
    print(f"wrote {KEYS_FILE} ({len(shapes)} keys) and {FEATURES_FILE}")


if __name__ == "__main__":
    main()
