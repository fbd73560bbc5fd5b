"""LOINC codes and UCUM units shared by the FHIR, HL7 v2 and ASTM messages.

One table, so the three interfaces cannot drift apart.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

LOINC_SYSTEM = "http://loinc.org"
UCUM_SYSTEM = "http://unitsofmeasure.org"

# Five-part differential, percent of leukocytes, "by Automated count" variants.
PERCENT_CODES = {
    "neutrophil": ("770-8", "Neutrophils/100 leukocytes in Blood by Automated count"),
    "lymphocyte": ("736-9", "Lymphocytes/100 leukocytes in Blood by Automated count"),
    "monocyte": ("5905-5", "Monocytes/100 leukocytes in Blood by Automated count"),
    "eosinophil": ("713-8", "Eosinophils/100 leukocytes in Blood by Automated count"),
    "basophil": ("706-2", "Basophils/100 leukocytes in Blood by Automated count"),
}

# The report as a whole: the automated differential panel without the CBC part,
# which this device does not measure.
PANEL_CODE = ("57023-4", "Auto Differential panel - Blood")

# Short names the lab screens show (HL7 OBX-3 text, ASTM test name).
SHORT_NAMES = {
    "neutrophil": "NEUT%",
    "lymphocyte": "LYMPH%",
    "monocyte": "MONO%",
    "eosinophil": "EOS%",
    "basophil": "BASO%",
}

PERCENT_UNIT = "%"
