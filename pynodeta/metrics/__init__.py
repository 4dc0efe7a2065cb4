"""Sample-quality metrics: the Fréchet distance and the feature extractors it is computed in.

Always report the real-data floor beside a generated score: the distance between two real sets
(train vs test features of the same extractor), ``frechet_distance(train_feats, test_feats)``.
"""

from .digits import DigitsFeatureExtractor, DigitsFeatureNet
from .dinov2 import DINOV2_WEIGHTS_URL, DINOv2FeatureExtractor, dinov2_position_embedding, edm2_dinov2_pixels
from .fid_inception import PYTORCH_FID_WEIGHTS_URL, FIDInceptionV3
from .frechet import feature_statistics, frechet_distance, frechet_distance_from_statistics
from .inception import INCEPTION_URL, InceptionFeatureExtractor
from .reference_stats import FeatureMoments, load_reference_statistics, save_reference_statistics

__all__ = [
    "frechet_distance",
    "frechet_distance_from_statistics",
    "feature_statistics",
    "DigitsFeatureExtractor",
    "DigitsFeatureNet",
    "InceptionFeatureExtractor",
    "INCEPTION_URL",
    "FIDInceptionV3",
    "DINOv2FeatureExtractor",
    "DINOV2_WEIGHTS_URL",
    "edm2_dinov2_pixels",
    "dinov2_position_embedding",
    "FeatureMoments",
    "save_reference_statistics",
    "load_reference_statistics",
    "PYTORCH_FID_WEIGHTS_URL",
]
