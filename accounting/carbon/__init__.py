"""Carbon: the grid's intensity, the SCI formula and the stage that applies them.

``intensity`` holds the sources (a fixed value, the bundled country table, live
providers); ``sci`` the Green Software Foundation's formula; ``stage`` the pipeline
stage that turns a request's measured energy into CO2e and SCI.
"""

from accounting.carbon.embodied import Embodied, embodied_for
from accounting.carbon.intensity import (
    WORLD_AVERAGE_G_PER_KWH,
    Intensity,
    IntensitySource,
    build_source,
)
from accounting.carbon.stage import CarbonStage, carbon

__all__ = [
    "WORLD_AVERAGE_G_PER_KWH",
    "CarbonStage",
    "Embodied",
    "Intensity",
    "IntensitySource",
    "build_source",
    "carbon",
    "embodied_for",
]
