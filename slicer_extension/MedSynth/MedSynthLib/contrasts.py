"""Canonical contrast names and the rules that recognise them in file names.

This module imports only the standard library: the Slicer module reuses it to pre-fill its selectors from the names
of loaded volumes.
"""
from __future__ import annotations

import re
from typing import NamedTuple

CONTRASTS = ("T1", "T1C", "T2", "PD", "FLAIR", "DWI")
BRAIN_MASK = "BRAIN_MASK"
LESION_MASK = "LESION_MASK"
MASKS = (BRAIN_MASK, LESION_MASK)

IMAGE_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")

# Single tokens, matched after lower-casing and splitting on "_", "-", ".", " ".
_TOKENS: dict[str, str] = {
    **dict.fromkeys(["t1", "t1w", "t1n", "mprage", "t1native"], "T1"),
    **dict.fromkeys(["t1c", "t1ce", "t1post", "t1gado", "t1gd", "t1wce", "t1contrast", "t1cgd"], "T1C"),
    **dict.fromkeys(["t2", "t2w"], "T2"),
    **dict.fromkeys(["pd", "pdw", "dp"], "PD"),
    **dict.fromkeys(["flair", "fla", "t2f", "t2flair", "flair3d", "3dflair", "darkfluid", "fl"], "FLAIR"),
    **dict.fromkeys(["dwi", "trace"], "DWI"),
    **dict.fromkeys(["brainmask", "brain-mask", "skullstrip", "mask"], BRAIN_MASK),
    **dict.fromkeys(
        ["lesion", "lesions", "lesionmask", "seg", "segmentation", "consensus", "goldstandard", "gold-standard",
         "otmulticlass", "tumor", "tumour", "wmh"],
        LESION_MASK,
    ),
}
# Token pairs that together name something else than either token alone.
_PAIRS: dict[tuple[str, str], str] = {
    ("brain", "mask"): BRAIN_MASK,
    ("lesion", "mask"): LESION_MASK,
    ("gold", "standard"): LESION_MASK,
    ("t1", "gd"): "T1C",
    ("t1", "post"): "T1C",
    ("t1", "ce"): "T1C",
    ("t1", "c"): "T1C",
    ("t1w", "ce"): "T1C",
    ("dark", "fluid"): "FLAIR",
}
# Sequence names that say a contrast only when no contrast word does: "t1_tse" is a T1, "AX_FSE" a T2. A SPACE,
# CUBE or VISTA series without a contrast word may be T2 or FLAIR: the name is silent on it.
_WEAK_TOKENS: dict[str, str] = {
    **dict.fromkeys(["fse", "tse", "frfse", "haste"], "T2"),
    **dict.fromkeys(["spgr", "fspgr", "bravo", "mp2rage", "tfe", "vibe"], "T1"),
}
# Words after which a T1 is post-contrast (unless "pre" says otherwise): "MPRAGE_POST", "AX_T1_+C", "T1 Gad".
_POST_CONTRAST = {"post", "gd", "gad", "gado", "gadolinium", "contrast", "postcontrast", "postgd", "+c", "c+", "pc"}
# Words of scanners' series names that carry no study identity: orientation, acquisition, series numbers.
_SERIES_WORDS = {"sag", "sagittal", "ax", "axial", "tra", "transverse", "cor", "coronal", "obl", "iso", "2d", "3d",
                 "space", "cube", "vista", "dark", "fluid", "fs", "fatsat", "se", "ir", "gre", "pre", "thin", "hr",
                 "nd", "mpr", "mip", "sense", "grappa", *_POST_CONTRAST}
_SERIES_WORD = re.compile(r"^(\d+|p\d|\d+(\.\d+)?mm|iso\d*|[xyz])$")
# Name decorations that carry no contrast: deepmedic's z-scoring suffix, resampling notes such as
# "T2W_in_FLAIR_space" or "consensus_on_3DFLAIR_grid".
_DECORATIONS = re.compile(r"(_subtrmeandivstd|_in_[a-z0-9]+_space|_on_[a-z0-9]+_grid)$")
_SPLIT = re.compile(r"[_\-. ]+")
_BIDS_CE = re.compile(r"(?<=[_\-])ce-[A-Za-z0-9]+_|^ce-[A-Za-z0-9]+_", re.IGNORECASE)
# Suffix fallback for glued names such as "avg152T1"; longest first so "t1ce" wins over "t1".
_SUFFIXES = sorted((k for k in _TOKENS if k not in {"mask", "seg", "trace", "dp", "fla", "fl"}), key=len, reverse=True)


class ParsedName(NamedTuple):
    """A file stem split into the study prefix it carries and the contrast (or mask) it names."""

    prefix: str
    contrast: str


def strip_extension(name: str) -> str:
    lower = name.lower()
    for ext in IMAGE_EXTENSIONS:
        if lower.endswith(ext):
            return name[: -len(ext)]
    return name


def has_image_extension(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def parse_name(name: str) -> ParsedName | None:
    """Return (prefix, contrast) for a file or node name, or None when no rule recognises it.

    The contrast is the last recognised token; the prefix is what stands before it (the study id in a flat folder
    such as ``sub01_T1.nii.gz`` -> ("sub01", "T1")). Mask words win over contrast words, so
    ``consensus_lesions_on_3DFLAIR_grid`` is a lesion mask, not a FLAIR.
    """
    stem = strip_extension(name)
    # BIDS: the "ce-<agent>" entity turns a T1w into a post-contrast T1 (sub-01_ce-gd_T1w).
    bids_ce = _BIDS_CE.search(stem)
    if bids_ce:
        parsed = parse_name(stem[: bids_ce.start()] + stem[bids_ce.end() :])
        if parsed is not None and parsed.contrast == "T1":
            return ParsedName(parsed.prefix, "T1C")
    lower = _DECORATIONS.sub("", stem.lower())
    tokens = [t for t in _SPLIT.split(lower) if t]
    if not tokens:
        return None
    for i, token in enumerate(tokens):
        if _TOKENS.get(token) in MASKS:
            return ParsedName(_prefix(stem, tokens, i), _TOKENS[token])
        if i + 1 < len(tokens) and _PAIRS.get((token, tokens[i + 1])) in MASKS:
            return ParsedName(_prefix(stem, tokens, i), _PAIRS[(token, tokens[i + 1])])
    parsed = _contrast_word(stem, tokens)
    if parsed is not None and parsed.contrast == "T1" and "pre" not in tokens \
            and any(t in _POST_CONTRAST for t in tokens):
        return ParsedName(parsed.prefix, "T1C")
    return parsed


def _contrast_word(stem: str, tokens: list[str]) -> ParsedName | None:
    for i in range(len(tokens) - 1, -1, -1):
        if i >= 1 and (tokens[i - 1], tokens[i]) in _PAIRS:
            return ParsedName(_prefix(stem, tokens, i - 1), _PAIRS[(tokens[i - 1], tokens[i])])
        if tokens[i] in _TOKENS:
            return ParsedName(_prefix(stem, tokens, i), _TOKENS[tokens[i]])
    last = tokens[-1]
    for suffix in _SUFFIXES:
        if last.endswith(suffix):
            return ParsedName(_prefix(stem, tokens, len(tokens) - 1), _TOKENS[suffix])
    for i in range(len(tokens) - 1, -1, -1):
        if tokens[i] in _WEAK_TOKENS:
            return ParsedName(_prefix(stem, tokens, i), _WEAK_TOKENS[tokens[i]])
    return None


def is_series_prefix(prefix: str) -> bool:
    """True when a name's prefix is made of scanner series words only (``101_SAG``, ``t2``, ``t1_mprage``): it
    numbers or describes a series, it does not name a study."""
    tokens = [t for t in _SPLIT.split(prefix.lower()) if t]
    return all(t in _TOKENS or t in _WEAK_TOKENS or t in _SERIES_WORDS or _SERIES_WORD.match(t) for t in tokens)


def _prefix(stem: str, tokens: list[str], index: int) -> str:
    """The original-case text of the stem before token ``index``, without trailing separators."""
    if index == 0:
        return ""
    pattern = r"[_\-. ]+".join(re.escape(t) for t in tokens[:index])
    match = re.match(pattern, stem, flags=re.IGNORECASE)
    return (match.group(0) if match else "_".join(tokens[:index])).rstrip("_-. ")


def canonical_contrast(name: str) -> str:
    """Map a user-given contrast name (``t1ce``, ``T2w``, ``flair``) to its canonical spelling or raise ValueError."""
    parsed = parse_name(name)
    if parsed is None or parsed.prefix or parsed.contrast in MASKS:
        raise ValueError(f"unknown contrast {name!r}; expected one of {', '.join(CONTRASTS)}")
    return parsed.contrast
