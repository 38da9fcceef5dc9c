"""Label normalisation: the ONE place where source findings become the project's classes."""
from __future__ import annotations

import re

COVID = "COVID-19"
NORMAL = "Normal"
PNEUMONIA = "Pneumonia"
CLASSES = (COVID, NORMAL, PNEUMONIA)

# Lower-cased finding text (or one component of a hierarchical finding such as
# "Pneumonia/Viral/COVID-19") -> class. Anything absent is unusable (filtered with its text).
_FINDINGS = {
    # COVID-19
    "covid-19": COVID, "covid19": COVID, "covid": COVID, "covid-19, ards": COVID,
    "sars-cov-2": COVID,
    # Normal
    "no finding": NORMAL, "no_findings": NORMAL, "no findings": NORMAL, "normal": NORMAL,
    # Pneumonia (bacterial, viral other than COVID-19, fungal, lipoid)
    "pneumonia": PNEUMONIA, "viral pneumonia": PNEUMONIA, "bacterial pneumonia": PNEUMONIA,
    "bacterial": PNEUMONIA, "viral": PNEUMONIA, "fungal": PNEUMONIA, "bacteria": PNEUMONIA,
    "virus": PNEUMONIA, "sars": PNEUMONIA, "mers": PNEUMONIA, "mers-cov": PNEUMONIA,
    "influenza": PNEUMONIA, "varicella": PNEUMONIA, "herpes": PNEUMONIA,
    "streptococcus": PNEUMONIA, "staphylococcus": PNEUMONIA, "klebsiella": PNEUMONIA,
    "legionella": PNEUMONIA, "e.coli": PNEUMONIA, "mycoplasma": PNEUMONIA,
    "mycoplasma bacterial pneumonia": PNEUMONIA, "chlamydophila": PNEUMONIA,
    "pneumocystis": PNEUMONIA, "aspergillosis": PNEUMONIA, "nocardia": PNEUMONIA,
    "lipoid": PNEUMONIA, "lung opacity": PNEUMONIA,
}
# Findings that are explicitly not a class of this project even though they look medical: ARDS
# alone, tuberculosis, "todo", inconclusive reads... fall through to None. Some are listed on purpose
# because a nearby spelling IS mapped: the COVID-19 Radiography Database's "Lung_Opacity" folder is a
# mix of non-COVID lung findings (unlike RSNA's "Lung Opacity" target, which is the pneumonia label).
_UNUSABLE = {"lung_opacity", "no lung opacity / not normal", "todo", "inconclusive"}


def normalise_finding(finding: str | None) -> str | None:
    """Map a source's finding text to COVID-19 / Normal / Pneumonia, or None when unusable.

    Hierarchical findings ("Pneumonia/Viral/COVID-19") are resolved from the most specific part.
    """
    if finding is None:
        return None
    text = re.sub(r"\s+", " ", str(finding)).strip().lower()
    if not text:
        return None
    if text in _UNUSABLE:
        return None
    if text in _FINDINGS:
        return _FINDINGS[text]
    parts = [p.strip() for p in text.split("/") if p.strip()]
    for part in reversed(parts):
        if part in _FINDINGS:
            return _FINDINGS[part]
    return None


def label_index(label: str, classes: tuple[str, ...] | list[str] = CLASSES) -> int:
    return list(classes).index(label)
