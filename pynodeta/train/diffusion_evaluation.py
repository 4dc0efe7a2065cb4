"""Sample quality and likelihood of a diffusion module: FD beside its real-data floor, NLL in bits/dim
(probability-flow ODE) and, for DDPM models, the variational bound in bits/dim.

FD is computed in the features of ``pynodeta.metrics.DigitsFeatureExtractor`` for 8×8 digits and of
``InceptionFeatureExtractor`` where the module names Inception weights on disk. The floor is the
distance between the training and the test images in the same features: a generator matching the
data distribution scores about the floor, so FD / floor is the number to compare across runs.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import time
from pathlib import Path

import torch

from pynodeta.diffusion import bits_per_dim, variational_bound
from pynodeta.metrics import (
    DigitsFeatureExtractor,
    FeatureMoments,
    InceptionFeatureExtractor,
    frechet_distance,
    frechet_distance_from_statistics,
)
from pynodeta.ode.stats import record_stats

from .._atomic import atomic_write_text
from .conditioning import one_hot_labels
from .diffusion_sampling import describe_sampler_options, generate_batches, resolved_sampler_options
from .latent_runs import display_decoder
from .objectives import DDPMObjective
from .sample_outputs import GridWriter
from .scored_samples import GRID_IMAGES, ScoreCollector, score_batch

__all__ = ["evaluate_samples", "nll_bits_per_dim", "vlb_bits_per_dim", "final_summary",
           "summary_line", "dataset_statistics"]

EVALUATION_SEED = 2024  # the same noise for every evaluation, so that epochs and runs are compared on one draw


def _extractor(module):
    """The FD features of the module's images: digits' own, else Inception from evaluation.inception_weights."""
    if tuple(module.sample_shape) == (1, 8, 8):
        return DigitsFeatureExtractor()
    if module.evaluation.inception_weights is not None:
        return InceptionFeatureExtractor(module.evaluation.inception_weights)
    return None


def _datamodule(module, datamodule=None):
    datamodule = datamodule if datamodule is not None else getattr(module.trainer, "datamodule", None)
    if datamodule is None or not hasattr(datamodule, "train_set"):
        raise ValueError("FD and bits/dim need the image DataModule (train_set and test_set); pass datamodule=")
    if datamodule.train_set is None:
        datamodule.setup("fit")
    return datamodule


def _pixel_test_set(module, datamodule):
    """The test images (uint8 ``images``) that bits/dim are measured on; None for data without them: latents
    (a latent model has no density over pixels) or an image folder without a test split."""
    test = getattr(_datamodule(module, datamodule), "test_set", None)
    return test if hasattr(test, "images") else None


def _real_images(dataset) -> torch.Tensor:
    """All images of an ``ImageTensorDataset`` in its normalised scale, (n, C, H, W)."""
    return torch.stack([dataset[i][0] for i in range(len(dataset))])


def _features_key(extractor) -> tuple:
    """What makes two extractors' features the same: their kind and the weights file they read."""
    return type(extractor), str(getattr(extractor, "weights_path", None))


def _reference(module, datamodule, extractor) -> dict:
    """Test features and the floor FD(train, test), computed once per module, data and features."""
    cache = getattr(module, "_fd_reference", None)
    if cache is not None and cache["data"] is datamodule and cache["features"] == _features_key(extractor):
        return cache
    train = extractor(_real_images(datamodule.train_set)).double().cpu()
    test = extractor(_real_images(datamodule.test_set)).double().cpu()
    module._fd_reference = {"data": datamodule, "features": _features_key(extractor), "test": test,
                            "test_labels": datamodule.test_set.labels.clone(),
                            "floor": frechet_distance(train, test)}
    return module._fd_reference


@torch.no_grad()
def dataset_statistics(dataset, extractor, batch_size: int = 256):
    """(μ, Σ) of ``extractor``'s features of every image of ``dataset`` (an ``ImageTensorDataset``), one batch
    at a time: the reference statistics of FID / FD_DINOv2, to save once with ``save_reference_statistics``."""
    moments = None
    for start in range(0, len(dataset), batch_size):
        images = torch.stack([dataset[i][0] for i in range(start, min(start + batch_size, len(dataset)))])
        features = extractor(images.clamp(-1, 1))
        moments = moments or FeatureMoments(features.shape[1])
        moments.add(features)
    if moments is None:
        raise ValueError("the dataset is empty; reference statistics need at least 2 images")
    return moments.statistics()


def evaluate_samples(module, grid_path: str | os.PathLike | None, datamodule=None, num: int | None = None,
                     sampler: str | None = None, steps: int | None = None, *, extractor=None,
                     reference_stats=None, seed: int = EVALUATION_SEED, blocks=None, decode=None,
                     **draw_options) -> dict | None:
    """Draw ``num`` images (default ``module.evaluation.num_samples``, or only the grid's 64 when nothing can score
    them: no features, or latents without an extractor given) with the module's current weights, save
    the first 64 as a grid at ``grid_path`` (None: no grid; DDP ranks other than 0), and compute FD against the
    test images beside the floor. The images are scored as pixels, clipped to the data range [-1, 1], one
    batch at a time: memory holds one batch of images and the features of all.

    A class-conditional model draws every class in turn (``class_labels="all"`` unless given) with the
    evaluation's guidance; on digits the result adds the conditional accuracy (how often the digits
    classifier names the requested class) and the FD of each class against that class's test images.

    ``extractor``: the features (None: the module's, see ``_extractor``), e.g. ``InceptionFeatureExtractor`` or
    ``DINOv2FeatureExtractor``. ``reference_stats``: (μ, Σ) of the real data in those features (e.g. from
    ``load_reference_statistics``): the FD is computed against them, the test images are not read, and the
    floor and the per-class FD are NaN / left out (the 50 000-sample protocol of FID and FD_DINOv2).

    ``seed``: of the noise (default: fit's, the same draw at every evaluation). ``blocks``: None draws as fit
    does, one generator consumed batch after batch; a :class:`~pynodeta.train.block_draw.BlockDraw` draws in
    seeded blocks, shared among its ranks and cached, and returns the result on its rank 0 only (None on the
    others), the same whatever the number of ranks. ``decode``: latents → images in [-1, 1] (default: the
    DataModule's, for latent data).

    ``draw_options``: :func:`~pynodeta.train.diffusion_sampling.generate_batches`' (``class_labels``,
    ``guidance``, ``solver``, ``precision``, ``sampler_options``).

    Returns {"fd", "fd_floor", "fd_ratio", "sampler", "sampler_options", "sampler_nfe", "sampling_seconds",
    "grid"} (and for conditional models "guidance", "conditional_accuracy", "fd_per_class"); the FD entries are
    NaN when there is no feature extractor for these images. ``sampling_seconds`` sums the sampler time of every block.
    """
    default_num = num is None
    num = module.evaluation.num_samples if num is None else num
    if num < 2:
        raise ValueError(f"the Fréchet distance needs at least 2 images (it estimates a covariance), got num={num}")
    sampler = module.evaluation.sampler if sampler is None else sampler
    steps = module.evaluation.steps if steps is None else steps
    if module.num_classes is not None:
        draw_options.setdefault("class_labels", "all")
        draw_options.setdefault("guidance", module.evaluation.guidance)
    # resolved once, so that the result names the options the images were drawn with
    options = resolved_sampler_options(module, sampler, draw_options.get("sampler_options"))
    draw_options["sampler_options"] = options
    if decode is None:
        decode = display_decoder(datamodule if datamodule is not None else
                                 getattr(module._trainer, "datamodule", None))
    given = extractor
    if extractor is None and decode is None:  # latents are not images: their FD needs an extractor passed in
        extractor = _extractor(module)
    keep_features = reference_stats is None  # against saved statistics, 50 000 × 2048 features are summed, not kept
    if extractor is not None and keep_features and _pixel_test_set(module, datamodule) is None:
        # latents or an image folder: no test images to score against (checked before anything is drawn)
        if given is not None:
            raise ValueError("the run's data has no test images to compute the FD against (VAE latents or an image "
                             "folder): pass the real data's statistics in these features (--reference-stats; "
                             "pytorch-fid's .npz or edm2's dataset-refs .pkl)")
        extractor = None  # the run's own features, nothing to compare them with: FD NaN, as for latents
    if extractor is None and reference_stats is None and default_num:
        num = min(num, GRID_IMAGES)  # nothing scores the images: the run's default draws the grid only
    reference = None
    if extractor is not None and keep_features:
        data = _datamodule(module, datamodule)  # checked on every rank before drawing; features after it
        reference = _reference(module, data, extractor) if blocks is None else None
    if blocks is None:
        collector = _draw_in_sequence(module, num, sampler, steps, seed, decode, extractor, keep_features,
                                      draw_options)
    else:
        collector = blocks.collect(module, num, sampler, steps, seed=seed, decode=decode, extractor=extractor,
                                   keep_features=keep_features, **draw_options)
        if collector is None:  # a rank other than 0: its blocks are on rank 0 now
            return None
        if extractor is not None and keep_features:
            reference = _reference(module, data, extractor)
    grid = None
    if grid_path is not None:
        writer = GridWriter(grid_path, limit=GRID_IMAGES)
        for images in collector.grid_images():
            writer.add(images)
        grid = writer.close()
    fd = floor = math.nan
    if reference is not None:
        fd, floor = frechet_distance(collector.features(), reference["test"]), reference["floor"]
    elif collector.moments is not None:
        fd = frechet_distance_from_statistics(*collector.moments.statistics(), *reference_stats)
    result = {"fd": fd, "fd_floor": floor, "fd_ratio": fd / floor, "sampler": sampler, "sampler_options": options,
              "sampler_nfe": collector.mean_nfe(), "sampling_seconds": collector.seconds(),
              "grid": None if grid is None else str(grid)}
    labels = collector.labels()
    if labels is not None:
        result.update(_conditional_scores(labels, collector.predicted(), collector.features(), reference))
        result["guidance"] = float(draw_options["guidance"])
    return result


def _draw_in_sequence(module, num, sampler, steps, seed, decode, extractor, keep_features, options) -> ScoreCollector:
    """Fit's scheme: one generator seeded once, consumed batch after batch (its FD figures are compared over
    time, so this draw stays as it was)."""
    generator = torch.Generator().manual_seed(seed)
    batches = generate_batches(module, num, sampler, steps, generator=generator, **options)
    collector, first = ScoreCollector(keep_features), 0
    for index in itertools.count():
        started = time.perf_counter()
        batch = next(batches, None)
        seconds = time.perf_counter() - started  # the sampler's time; feature extraction is not counted
        if batch is None:
            return collector
        collector.add(score_batch(batch, index, first, seconds, decode, extractor))
        first += len(batch.images)


def _conditional_scores(labels: torch.Tensor, predicted: torch.Tensor | None, features: torch.Tensor | None,
                        reference: dict | None) -> dict:
    """Conditional accuracy (the classifier's agreement with the requested class) and FD of each class
    against the test images of that class (NaN for a class with fewer than 2 images on either side)."""
    accuracy = float((predicted == labels).double().mean()) if predicted is not None else math.nan
    scores = {"conditional_accuracy": accuracy}
    if reference is None:
        return scores
    per_class = {}
    for label in sorted(set(labels.tolist())):
        ours, theirs = features[labels == label], reference["test"][reference["test_labels"] == label]
        per_class[str(label)] = frechet_distance(ours, theirs) if len(ours) > 1 and len(theirs) > 1 else math.nan
    scores["fd_per_class"] = per_class
    return scores


@torch.no_grad()
def nll_bits_per_dim(module, datamodule=None, num_images: int | None = None, solver=None) -> dict:
    """Mean bits/dim of the first ``num_images`` test images (probability-flow ODE, Hutchinson probes,
    uniform dequantisation with ``module.evaluation.num_bins`` values); {"bpd", "bpd_stderr", "nll_nfe"}.
    ``solver``: a ``SolverSettings``; None: the module's ``evaluation.solver``, else dopri5 at
    rtol = atol = 1e-3. A class-conditional model's
    likelihood is conditioned on each test image's label."""
    count = module.evaluation.nll_num_images if num_images is None else num_images
    test = _pixel_test_set(module, datamodule) if count >= 1 else None
    if test is None:
        return {"bpd": math.nan, "bpd_stderr": math.nan, "nll_nfe": math.nan}
    raw = test.images[:count].to(torch.int64)
    num_bins = module.evaluation.num_bins
    if int(raw.max()) >= num_bins:
        raise ValueError(f"test pixels reach {int(raw.max())} but num_bins={num_bins}; set num_bins to the "
                         f"number of pixel values (digits: 17, 8-bit images: 256)")
    labels = {}
    if module.num_classes is not None:
        labels["class_labels"] = one_hot_labels(test.labels[:count], module.num_classes,
                                                torch.empty((), device=module.device))
    generator = torch.Generator().manual_seed(EVALUATION_SEED)
    was_training = module.training
    module.eval()
    try:
        with record_stats() as log:  # over the denoiser's own noise range (a DDPM schedule's, EDM's 0.002 to 80)
            bpd = bits_per_dim(module.denoiser(), raw.to(module.device), num_bins, generator=generator,
                               solver=solver if solver is not None else module.evaluation.ode_solver,
                               **labels)
    finally:
        module.train(was_training)
    bpd = bpd.double().cpu()
    stderr = float(bpd.std() / math.sqrt(len(bpd))) if len(bpd) > 1 else math.nan
    return {"bpd": float(bpd.mean()), "bpd_stderr": stderr, "nll_nfe": float(sum(s.nfe for s in log))}


@torch.no_grad()
def vlb_bits_per_dim(module, datamodule=None, num_images: int | None = None, sampled_timesteps: int | None = None,
                     chunk_size: int = 16) -> dict:
    """DDPM models: the mean variational bound (``pynodeta.diffusion.variational_bound``, bits/dim) of the first
    ``num_images`` test images (default ``module.evaluation.nll_num_images``, the NLL's), exact over all T timesteps or,
    with ``sampled_timesteps=K``, its unbiased estimate from K stratified timesteps per image;
    {"vlb_bpd", "vlb_stderr", "vlb_sampled_timesteps" (None: exact), "vlb_num_timesteps"}. EDM models: {}."""
    objective = module.objective
    if not isinstance(objective, DDPMObjective):
        return {}
    count = module.evaluation.nll_num_images if num_images is None else num_images
    result = {"vlb_sampled_timesteps": sampled_timesteps, "vlb_num_timesteps": objective.schedule.num_timesteps}
    test = _pixel_test_set(module, datamodule) if count >= 1 else None
    if test is None:
        return {"vlb_bpd": math.nan, "vlb_stderr": math.nan, **result}
    x0 = torch.stack([test[i][0] for i in range(min(count, len(test)))]).to(module.device)
    was_training = module.training
    module.eval()
    try:
        bound = variational_bound(objective.eps_model(module.model), x0, objective.schedule,
                                  num_bins=module.evaluation.num_bins,
                                  sampled_timesteps=sampled_timesteps, chunk_size=chunk_size,
                                  generator=torch.Generator().manual_seed(EVALUATION_SEED)).cpu()
    finally:
        module.train(was_training)
    stderr = float(bound.std() / math.sqrt(len(bound))) if len(bound) > 1 else math.nan
    return {"vlb_bpd": float(bound.mean()), "vlb_stderr": stderr, **result}


def summary_line(result: dict) -> str:
    """``pynodeta summary: FD a / floor b = r× | NLL c bits/dim [| VLB v ± e bits/dim (K of T timesteps)]
    [| class accuracy a at guidance w] | sampler s [(its options)], NFE n | grid path`` (``no grid`` without one);
    the VLB part for DDPM models only, the class accuracy for class-conditional ones."""
    bound = ""
    if "vlb_bpd" in result:
        sampled, total = result["vlb_sampled_timesteps"], result["vlb_num_timesteps"]
        which = f"all {total} timesteps" if sampled is None else f"{sampled} of {total} timesteps, stratified"
        bound = f" | VLB {result['vlb_bpd']:.3f} ± {result['vlb_stderr']:.3f} bits/dim ({which})"
    if "conditional_accuracy" in result:
        bound += f" | class accuracy {result['conditional_accuracy']:.3f} at guidance {result['guidance']:g}"
    return (f"pynodeta summary: FD {result['fd']:.3f} / floor {result['fd_floor']:.3f} = {result['fd_ratio']:.2f}× | "
            f"NLL {result['bpd']:.3f} bits/dim{bound} | sampler {result['sampler']}"
            f"{describe_sampler_options(result.get('sampler_options'))}, NFE {result['sampler_nfe']:.0f} | "
            f"{'no grid' if result['grid'] is None else 'grid ' + result['grid']}")


def final_summary(module, out_dir: str | os.PathLike, datamodule=None) -> dict:
    """The end of ``fit``: final grid, FD with floor, bits/dim (and the variational bound of DDPM models, summed
    over all timesteps); prints one line, writes summary.json (rank 0)."""
    out_dir = Path(out_dir)
    trainer = module._trainer
    rank_zero = trainer is None or trainer.is_global_zero
    # under DDP every rank evaluates alike (same seeds, same weights: no collective can wait on rank 0); rank 0 writes
    result = evaluate_samples(module, out_dir / "samples_final.png" if rank_zero else None, datamodule)
    result.update(nll_bits_per_dim(module, datamodule))
    # exact over all T: 25 CPU-seconds for digits_ddpm's 32 images at T = 1000, beside 12 s for its DDIM-50
    # FD samples and 11 s for the ODE NLL, within the config's budget (benchmarks/ddpm_vlb_cost.py)
    result.update(vlb_bits_per_dim(module, datamodule))
    if rank_zero:
        print(summary_line(result), flush=True)
        atomic_write_text(out_dir / "summary.json", json.dumps(result, indent=2))
    return result
