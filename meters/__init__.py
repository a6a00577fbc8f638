"""Power meters: one module per meter kind, a sampler, detection and the proxy stage.

What other packages use: :func:`machines_component` (the app component: one
sampler and meter stage per machine), :func:`meters_component` (one machine's),
:class:`MeterStage`, :class:`Sampler` and :class:`WindowEnergy` (published as
in :class:`~proxy.context.MachinePower`), :func:`detect_meters`, and the meter classes for
tests and tools.
"""

from meters.base import COMPONENTS, Activity, Meter, MeterAbsent, Reading
from meters.detect import Detection, Hardware, detect_meters
from meters.estimate import EstimateMeter
from meters.ipmi import IpmiMeter
from meters.machines import MachineMeters, machines_component, meters_component
from meters.nvml import NvmlMeter
from meters.plug import ShellyMeter, TasmotaMeter
from meters.prometheus import PrometheusMeter
from meters.rapl import RaplMeter
from meters.sampler import Sampler
from meters.stage import MeterStage
from meters.thermal import CpuThermometer, ThermalGuard
from meters.window import ComponentEnergy, WindowEnergy, total_components

__all__ = [
    "COMPONENTS",
    "Activity",
    "ComponentEnergy",
    "CpuThermometer",
    "Detection",
    "EstimateMeter",
    "Hardware",
    "IpmiMeter",
    "MachineMeters",
    "Meter",
    "MeterAbsent",
    "MeterStage",
    "NvmlMeter",
    "PrometheusMeter",
    "RaplMeter",
    "Reading",
    "Sampler",
    "ShellyMeter",
    "TasmotaMeter",
    "ThermalGuard",
    "WindowEnergy",
    "detect_meters",
    "machines_component",
    "meters_component",
    "total_components",
]
