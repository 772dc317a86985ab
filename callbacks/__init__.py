"""Lightning callbacks that attach precision emulation to an unmodified Trainer (``boundfinder.callbacks``).

- :class:`PrecisionEmulation`: one policy at one level (``op``, ``layer``, ``batch``) for chosen entry points;
- :class:`PrecisionSchedule`: a policy per phase of training, switched at given steps or epochs;
- :class:`QuantizationAware`: integer fake-quantized training and BinaryNet;
- :class:`DivergenceGuard`: the first NaN or infinite training loss is recorded and stops (or fails) the fit.

Callbacks hold no numerics: they translate Trainer events into calls on ``boundfinder.emulation`` and
``boundfinder.quantize``.
"""

from boundfinder.callbacks.divergence import DivergenceGuard, TrainingDiverged
from boundfinder.callbacks.emulation import PrecisionEmulation
from boundfinder.callbacks.precision_schedule import PrecisionSchedule
from boundfinder.callbacks.quantization_aware import QuantizationAware

__all__ = ["DivergenceGuard", "PrecisionEmulation", "PrecisionSchedule", "QuantizationAware", "TrainingDiverged"]
