"""Local-feature geometric matching engine for beluga whale photo-identification.

The public surface: :class:`matcher.engine.Engine` (images -> features -> pair verdicts, cached),
:mod:`matcher.presets` (named stage settings), :func:`matcher.cascade.run_cascade` (queries ranked
against their databases within a time budget) and :mod:`matcher.challenge.run` (the challenge's main job).
The layers, bottom up: ``io`` and ``presets``; ``features`` and ``pairs``; ``backends`` (where their work
runs: here, or on a Ray cluster); ``engine``; ``cascade``; ``challenge`` and ``curation``. Nothing imports upward.
"""

__version__ = "0.1.0"
