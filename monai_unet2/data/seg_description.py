"""What a DICOM SEG says about its content, read from a bundle's ``metadata.json``: a code, a colour and a description
per segment, a series description, and the algorithm (bundle name and version, registry version) that made it.

A viewer or PACS knows a segment only by its codes: 3D Slicer's terminology, dcmqi and OHIF show the segmented
property type (SCT 5366008 "Hippocampus"), its modifier ("Anterior") and category ("Anatomical Structure"), and
draw the segment in its RecommendedDisplayCIELabValue. A bundle states them once, under the ``dicom_seg`` key of
``configs/metadata.json`` (MONAI's metadata schema allows extra keys), with the segment attribute names of dcmqi's
JSON, so an entry can be copied from or to ``itkimage2segimage`` / Slicer metadata::

    "dicom_seg": {
        "SeriesDescription": "Hippocampus anterior/posterior, 2.5D UNet",
        "segments": {
            "1": {
                "SegmentDescription": "Anterior hippocampus (hippocampal head)",
                "SegmentedPropertyCategoryCodeSequence": {"CodeValue": "91723000", "CodingSchemeDesignator": "SCT",
                                                          "CodeMeaning": "Anatomical Structure"},
                "SegmentedPropertyTypeCodeSequence": {"CodeValue": "5366008", "CodingSchemeDesignator": "SCT",
                                                      "CodeMeaning": "Hippocampus"},
                "SegmentedPropertyTypeModifierCodeSequence": {... "Anterior"},
                "recommendedDisplayRGBValue": [220, 216, 20]
            }
        }
    }

Optional per segment: ``SegmentedPropertyTypeModifierCodeSequence``, ``AnatomicRegionSequence``,
``AnatomicRegionModifierSequence``, ``SegmentDescription``, ``recommendedDisplayRGBValue``. The segment labels are
the ``channel_def`` names. A label without an entry is coded from DICOM's own lists when its name is a standard
anatomical structure or tissue (``"liver"`` -> SCT 10200004 Liver, CID 7192), and only otherwise as SCT 85756007
"Tissue", with a warning naming the labels that need codes.
"""

from __future__ import annotations

import logging
import re
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

__all__ = [
    "ANATOMICAL_STRUCTURE",
    "SEG_METADATA_KEY",
    "TISSUE",
    "SegDescription",
    "SegmentCoding",
    "clean_decimal",
    "clean_pixel_measures",
    "derive_series_number",
    "segment_codings",
    "segment_item",
    "standard_coding",
]

logger = logging.getLogger(__name__)

#: the key of ``metadata.json`` that holds the SEG coding
SEG_METADATA_KEY = "dicom_seg"
_CODE_KEYS = ("CodeValue", "CodingSchemeDesignator", "CodeMeaning")
_MAX_SERIES_NUMBER = 2**31 - 1
#: SCT 91723000, the segmentation category of anatomical structures
ANATOMICAL_STRUCTURE = Code("91723000", "SCT", "Anatomical Structure")
#: SCT 85756007, the category of tissues, and the type of last resort
TISSUE = Code("85756007", "SCT", "Tissue")
#: CID 7192 (anatomical structures) and CID 7191 (tissues) with the category each implies
_STANDARD_LISTS = (("cid7192", ANATOMICAL_STRUCTURE), ("cid7191", TISSUE))


@dataclass(frozen=True)
class SegmentCoding:
    """The codes, description and colour of one segment.

    Args:
        label: SegmentLabel (the ``channel_def`` name).
        category: SegmentedPropertyCategoryCode.
        type: SegmentedPropertyTypeCode.
        type_modifier: SegmentedPropertyTypeModifierCode (e.g. SCT 255549009 "Anterior", a laterality).
        anatomic_region: AnatomicRegionCode, where the type alone does not say where (a lesion, a vessel).
        anatomic_region_modifier: AnatomicRegionModifierCode.
        description: SegmentDescription.
        rgb: recommended display colour (0-255), written as RecommendedDisplayCIELabValue.
        coded: whether the codes say what the segment is (``False`` for the "Tissue" last resort).
    """

    label: str
    category: Code
    type: Code
    type_modifier: Code | None = None
    anatomic_region: Code | None = None
    anatomic_region_modifier: Code | None = None
    description: str = ""
    rgb: tuple[int, int, int] | None = None
    coded: bool = True


@dataclass
class SegDescription:
    """Everything a SEG records about what it holds and what made it, besides the pixels and the source references.

    Args:
        segments: label value -> coding; values without one are coded by :func:`segment_codings`.
        series_description: SeriesDescription (64 characters at most are written).
        algorithm_name: AlgorithmName (and ManufacturerModelName): the bundle name.
        algorithm_version: AlgorithmVersion: the bundle version, plus the registry version when the weights came
            from MLflow.
        algorithm_source: AlgorithmSource, e.g. the ``models:/<name>/<version>`` the weights came from.
        content_creator_name: ContentCreatorName (type 2: written, empty when not known).
        series_number: SeriesNumber; ``None`` derives it from the source series (:func:`derive_series_number`).
    """

    segments: dict[int, SegmentCoding] = field(default_factory=dict)
    series_description: str = ""
    algorithm_name: str = "monai_unet2"
    algorithm_version: str = ""
    algorithm_source: str | None = None
    content_creator_name: str = ""
    series_number: int | None = None

    @classmethod
    def from_metadata(
        cls, metadata: Mapping[str, Any], algorithm_version: str | None = None, algorithm_source: str | None = None
    ) -> SegDescription:
        """The description a bundle's ``metadata.json`` gives (see the module docstring).

        Args:
            metadata: the parsed ``metadata.json``.
            algorithm_version: AlgorithmVersion; default the bundle's ``version``.
            algorithm_source: AlgorithmSource (the registry URI of the weights), if any.

        Raises:
            ValueError: an entry names a label the bundle does not have, or a code or colour is malformed.
        """
        where = f"metadata.json '{SEG_METADATA_KEY}'"
        section = metadata.get(SEG_METADATA_KEY) or {}
        outputs = metadata.get("network_data_format", {}).get("outputs", {})
        channel_def = next(iter(outputs.values()), {}).get("channel_def", {}) if outputs else {}
        names = {int(value): str(name) for value, name in channel_def.items() if int(value) != 0}
        segments = {}
        for value, attributes in (section.get("segments") or {}).items():
            if int(value) not in names:
                raise ValueError(f"{where}: segment {value} is not a label of the bundle (labels {sorted(names)})")
            segments[int(value)] = _coding_from_attributes(names[int(value)], attributes, f"{where} segment {value}")
        name = str(metadata.get("name") or "monai_unet2")
        version = str(metadata.get("version") or "")
        description = section.get("SeriesDescription") or f"{name} segmentation"
        return cls(
            segments=segments,
            series_description=str(description),
            algorithm_name=name,
            algorithm_version=algorithm_version or version,
            algorithm_source=algorithm_source,
            content_creator_name=str(section.get("ContentCreatorName", "")),
        )


def _code(entry: Any, where: str) -> Code:
    if not isinstance(entry, Mapping) or any(not str(entry.get(key, "")).strip() for key in _CODE_KEYS):
        raise ValueError(f"{where}: a code needs {', '.join(_CODE_KEYS)}, got {entry!r}")
    return Code(str(entry["CodeValue"]), str(entry["CodingSchemeDesignator"]), str(entry["CodeMeaning"]))


def _coding_from_attributes(label: str, attributes: Mapping[str, Any], where: str) -> SegmentCoding:
    def optional(key: str) -> Code | None:
        return _code(attributes[key], f"{where} {key}") if attributes.get(key) else None

    rgb = attributes.get("recommendedDisplayRGBValue")
    if rgb is not None:
        if len(rgb) != 3 or any(not 0 <= int(c) <= 255 for c in rgb):
            raise ValueError(f"{where}: recommendedDisplayRGBValue must be 3 values 0-255, got {rgb!r}")
        rgb = tuple(int(c) for c in rgb)
    for required in ("SegmentedPropertyCategoryCodeSequence", "SegmentedPropertyTypeCodeSequence"):
        if required not in attributes:
            raise ValueError(f"{where}: {required} is required")
    return SegmentCoding(
        label=label,
        category=_code(attributes["SegmentedPropertyCategoryCodeSequence"], f"{where} category"),
        type=_code(attributes["SegmentedPropertyTypeCodeSequence"], f"{where} type"),
        type_modifier=optional("SegmentedPropertyTypeModifierCodeSequence"),
        anatomic_region=optional("AnatomicRegionSequence"),
        anatomic_region_modifier=optional("AnatomicRegionModifierSequence"),
        description=str(attributes.get("SegmentDescription", "")),
        rgb=rgb,
    )


def standard_coding(label: str) -> SegmentCoding | None:
    """The coding DICOM's own lists give a label name, or ``None``.

    The name is turned into a pydicom keyword (``"left kidney"`` -> ``LeftKidney``) and looked up in CID 7192
    (anatomical structures: category SCT 91723000 Anatomical Structure) and CID 7191 (tissues: category SCT 85756007
    Tissue).

    Args:
        label: a segment label such as ``"liver"``.
    """
    keyword = "".join(word[:1].upper() + word[1:] for word in re.split(r"[^0-9A-Za-z]+", label) if word)
    for cid, category in _STANDARD_LISTS:
        try:
            code = getattr(getattr(codes, cid), keyword) if keyword else None
        except (AttributeError, RuntimeError):  # not in the list; pydicom 2.4 raises RuntimeError on ambiguity
            continue
        if code is not None:
            return SegmentCoding(label=label, category=category, type=code)
    return None


def segment_codings(
    names: Mapping[int, str], description: SegDescription | None, warn: bool = True
) -> dict[int, SegmentCoding]:
    """A coding for each segment number in ``names``: the description's, else :func:`standard_coding`, else "Tissue".

    Args:
        names: segment number -> label.
        description: what the bundle declares, or ``None``.
        warn: log one warning listing the labels that fell back to "Tissue".
    """
    declared = description.segments if description is not None else {}
    codings, uncoded = {}, []
    for number, label in names.items():
        coding = declared.get(number) or standard_coding(label)
        if coding is None:
            coding = SegmentCoding(label=label, category=TISSUE, type=TISSUE, coded=False)
            uncoded.append(label)
        elif coding.label != label:
            coding = SegmentCoding(**{**coding.__dict__, "label": label})
        codings[number] = coding
    if uncoded and warn:
        logger.warning(
            "DICOM SEG: no code for %s; written as SCT 85756007 'Tissue'. Add them under '%s' in the bundle's "
            "metadata.json (see docs/data.md)",
            ", ".join(repr(label) for label in uncoded),
            SEG_METADATA_KEY,
        )
    return codings


def segment_item(hd: Any, number: int, coding: SegmentCoding, algorithm: Any) -> Any:
    """highdicom's SegmentDescription of one segment, plus what its constructor does not take: SegmentDescription and
    the type and region modifiers (nested in their code items, as DICOM places them).

    Args:
        hd: the highdicom module (imported by the caller, an optional dependency).
        number: SegmentNumber.
        coding: the segment's codes, description and colour.
        algorithm: highdicom ``AlgorithmIdentificationSequence``.
    """
    item = hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=coding.label[:64],
        segmented_property_category=coding.category,
        segmented_property_type=coding.type,
        algorithm_type="AUTOMATIC",
        algorithm_identification=algorithm,
        anatomic_regions=[coding.anatomic_region] if coding.anatomic_region is not None else None,
        display_color=hd.color.CIELabColor.from_rgb(*coding.rgb) if coding.rgb is not None else None,
    )
    if coding.description:
        item.SegmentDescription = coding.description[:64]
    if coding.type_modifier is not None:
        item.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
            hd.sr.CodedConcept.from_code(coding.type_modifier)
        ]
    if coding.anatomic_region is not None and coding.anatomic_region_modifier is not None:
        item.AnatomicRegionSequence[0].AnatomicRegionModifierSequence = [
            hd.sr.CodedConcept.from_code(coding.anatomic_region_modifier)
        ]
    return item


def clean_pixel_measures(seg: Any) -> None:
    """Rewrite SpacingBetweenSlices and SliceThickness of every PixelMeasures item without floating-point noise
    (``0.99999999999999`` -> ``1``); highdicom writes the spacing it computes from the slice positions as is.

    Args:
        seg: the SEG data set, changed in place.
    """
    groups = [*seg.get("SharedFunctionalGroupsSequence", []), *seg.get("PerFrameFunctionalGroupsSequence", [])]
    for group in groups:
        for measures in group.get("PixelMeasuresSequence", []):
            for keyword in ("SpacingBetweenSlices", "SliceThickness"):
                if measures.get(keyword) not in (None, ""):
                    setattr(measures, keyword, clean_decimal(float(measures.get(keyword))))


def derive_series_number(source_number: Any, algorithm: str, now: float | None = None) -> int:
    """A SeriesNumber for a SEG: ``<source SeriesNumber> * 1000 + n`` with ``n`` in 1..999.

    Viewers sort series by number, so the SEG lands right after the series it segments (series 5 -> 5nnn).
    ``n`` is drawn from the algorithm and the second of writing, so another model, another version or a later run
    on the same series gets another number (999 values: two SEGs of one series share a number with probability
    about 1/1000). SeriesInstanceUID, not the number, identifies the series. Without a source number, or when the
    product would not fit DICOM's IS range, the result is ``n``.

    Args:
        source_number: the source's SeriesNumber (may be empty or missing).
        algorithm: name and version of what made the SEG.
        now: the time in seconds (default: now).
    """
    second = int(time.time() if now is None else now)
    suffix = 1 + zlib.crc32(f"{algorithm}|{second}".encode()) % 999
    try:
        base = int(str(source_number).strip())
    except (TypeError, ValueError):
        return suffix
    number = base * 1000 + suffix
    return number if 0 < number <= _MAX_SERIES_NUMBER else suffix


def clean_decimal(value: float, digits: int = 6) -> str:
    """A DICOM DS string without floating-point noise: ``0.99999999999999`` -> ``"1"``, ``2.5`` -> ``"2.5"``.

    Args:
        value: the number.
        digits: decimals kept (micrometres for millimetre values).
    """
    text = f"{round(float(value), digits):.{digits}f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text
