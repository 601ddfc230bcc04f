"""ACPO's algorithm in plain torch: segmentation, attribution, advantages and curriculum state.

This package imports neither verl nor Ray so that any trainer can use it.
Section marks in docstrings (``§4``) refer to the sections of ``docs/algorithm.md``.
"""

from acpo_core.config import (
    ACPOConfig,
    AdvantageConfig,
    AttributionConfig,
    ConfidenceConfig,
    CurriculumConfig,
    SegmentationConfig,
)

__all__ = [
    "ACPOConfig",
    "AdvantageConfig",
    "AttributionConfig",
    "ConfidenceConfig",
    "CurriculumConfig",
    "SegmentationConfig",
]
