"""Planning core: profiles, pipeline templates, instantiation, batch split, reconfiguration, costs.

Pure Python (+ numpy): importing this package never imports torch, simpy or runtime code, so the
simulator, the runtime and the notebooks all plan with exactly the same code. Most callers need only
:class:`Planner`; the modules underneath are public for those who want one step at a time.
"""

from oobleck.planning.batch import distribute_batch
from oobleck.planning.catalogue import analytic_profile, resolve_profile
from oobleck.planning.hardware import HARDWARE, HardwareSpec, get_hardware
from oobleck.planning.instantiate import guaranteed_range, instantiate
from oobleck.planning.plan import Pipeline, PipelineTemplate, Plan, Stage, Transfer
from oobleck.planning.planner import Planner
from oobleck.planning.profile import LayerProfile, ModelProfile
from oobleck.planning.reconfigure import Reconfiguration, reconfigure
from oobleck.planning.recovery import RecoveryConstants, RecoveryPrediction, predict_recovery
from oobleck.planning.shapes import MODELS, ModelShape, get_model_shape
from oobleck.planning.step_time import StepConstants
from oobleck.planning.templates import generate_templates

__all__ = [
    "HARDWARE",
    "MODELS",
    "HardwareSpec",
    "LayerProfile",
    "ModelProfile",
    "ModelShape",
    "Pipeline",
    "PipelineTemplate",
    "Plan",
    "Planner",
    "Reconfiguration",
    "RecoveryConstants",
    "RecoveryPrediction",
    "Stage",
    "StepConstants",
    "Transfer",
    "analytic_profile",
    "distribute_batch",
    "generate_templates",
    "get_hardware",
    "get_model_shape",
    "guaranteed_range",
    "instantiate",
    "predict_recovery",
    "reconfigure",
    "resolve_profile",
]
