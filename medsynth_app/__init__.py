"""MedSynth: MRI contrast synthesis."""

__version__ = "0.1.0"
