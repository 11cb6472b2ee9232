"""LLP data: the class list, annotation readers, feature readers and the synthetic dataset."""

from avvp.data.annotations import (
    SPLIT_FILES,
    Split,
    WeakLabels,
    load_split,
    read_dense_labels,
    read_weak_labels,
    video_id,
)
from avvp.data.classes import CLASS_INDEX, CLASSES, NUM_CLASSES, NUM_SEGMENTS
from avvp.data.features import FEATURE_DIRS, FeatureFolder, Features, load_features

__all__ = [
    "CLASSES",
    "CLASS_INDEX",
    "FEATURE_DIRS",
    "NUM_CLASSES",
    "NUM_SEGMENTS",
    "SPLIT_FILES",
    "FeatureFolder",
    "Features",
    "Split",
    "WeakLabels",
    "load_features",
    "load_split",
    "read_dense_labels",
    "read_weak_labels",
    "video_id",
]
