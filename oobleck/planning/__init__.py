"""Planning core: profiles, pipeline templates, instantiation, batch split, reconfiguration, costs.

Pure Python (+ numpy, networkx): importing this package never imports torch, simpy or runtime code,
so the simulator, the runtime and the notebooks all plan with exactly the same code.
"""

from oobleck.planning.hardware import HARDWARE, HardwareSpec, get_hardware
from oobleck.planning.plan import Pipeline, PipelineTemplate, Plan, Stage, Transfer
from oobleck.planning.profile import LayerProfile, ModelProfile

__all__ = [
    "HARDWARE",
    "HardwareSpec",
    "LayerProfile",
    "ModelProfile",
    "Pipeline",
    "PipelineTemplate",
    "Plan",
    "Stage",
    "Transfer",
    "get_hardware",
]
