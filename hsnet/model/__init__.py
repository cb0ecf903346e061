"""The HSNet model: kernel scale (:mod:`.dib`), network scale (:mod:`.fgal`), knowledge scale (:mod:`.ktl`)."""

from .dib import RDIB, SDIB
from .fgal import FGAL
from .hsnet import MIN_INPUT_SIZE, STAGES, HSNet, output_size
from .ktl import StemWeightsError

__all__ = ["FGAL", "HSNet", "MIN_INPUT_SIZE", "RDIB", "SDIB", "STAGES", "StemWeightsError",
           "output_size"]
