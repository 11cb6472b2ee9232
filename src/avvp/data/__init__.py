"""LLP data: the class list, annotation readers, feature readers and the synthetic dataset."""

from avvp.data.classes import CLASSES, NUM_CLASSES, NUM_SEGMENTS, CLASS_INDEX

__all__ = ["CLASSES", "NUM_CLASSES", "NUM_SEGMENTS", "CLASS_INDEX"]
