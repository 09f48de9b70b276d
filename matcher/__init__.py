"""Local-feature geometric matching engine for beluga whale photo-identification."""

__version__ = "0.1.0"
