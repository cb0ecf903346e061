"""The HSNet model: kernel scale (:mod:`.dib`), network scale (:mod:`.fgal`), knowledge scale (:mod:`.ktl`)."""

from .dib import RDIB, SDIB
from .fgal import FGAL
from ..sizes import MIN_INPUT_SIZE, output_size
from .hsnet import STAGES, HSNet
from .ktl import StemWeightsError

__all__ = ["FGAL", "HSNet", "MIN_INPUT_SIZE", "RDIB", "SDIB", "STAGES", "StemWeightsError",
           "output_size"]
