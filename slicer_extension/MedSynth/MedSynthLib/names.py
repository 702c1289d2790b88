"""The contrast name rules of the MedSynth library, as the Slicer module uses them.

``contrasts.py`` beside this file is a byte-for-byte copy of the library's ``medsynth_app/contrasts.py`` (standard
library only), so that the extension needs nothing outside its own folder; ``tests/test_slicer_ui.py`` keeps the two
files equal.
"""
from .contrasts import CONTRASTS, MASKS, canonical_contrast, parse_name, strip_extension  # noqa: F401
