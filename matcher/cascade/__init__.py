"""The shortlist cascade: stage 0 (global descriptors), stage 1 (the engine's verdicts), re-ranking with each
scenario's database, stage 2 (an expensive matcher), the final ranking, all sized by the time budget."""

from .assemble import run_cascade
from .scheduler import CascadeResult, CascadeSettings
from .stages import STAGE2_FACTORIES, register_stage2

__all__ = ["CascadeResult", "CascadeSettings", "STAGE2_FACTORIES", "register_stage2", "run_cascade"]
