"""EHR variables used by the MIMIC-IV loader (and planted by the synthetic generator).

itemids and labels are those of MIMIC-IV v2.x `icu/d_items` and `hosp/d_labitems`.
"""

# chartevents itemid -> (name used in the serialised EHR, unit)
VITALS: dict[int, tuple[str, str]] = {
    220045: ("heart rate", "bpm"),
    220179: ("systolic bp", "mmHg"),
    220180: ("diastolic bp", "mmHg"),
    220181: ("mean bp", "mmHg"),
    220210: ("respiratory rate", "insp/min"),
    220277: ("spo2", "%"),
    223761: ("temperature", "°F"),
}

# labevents itemid -> (name, unit)
LABS: dict[int, tuple[str, str]] = {
    50813: ("lactate", "mmol/L"),
    50912: ("creatinine", "mg/dL"),
    51301: ("wbc", "K/uL"),
    51006: ("bun", "mg/dL"),
    50983: ("sodium", "mEq/L"),
    50971: ("potassium", "mEq/L"),
    50931: ("glucose", "mg/dL"),
    51222: ("hemoglobin", "g/dL"),
    51265: ("platelets", "K/uL"),
    50882: ("bicarbonate", "mEq/L"),
}

# Plausibility bounds per variable: values outside are dropped (and counted) before summarising.
BOUNDS: dict[str, tuple[float, float]] = {
    "heart rate": (0, 350), "systolic bp": (0, 400), "diastolic bp": (0, 300), "mean bp": (0, 300),
    "respiratory rate": (0, 100), "spo2": (0, 100), "temperature": (70, 115),
    "lactate": (0, 40), "creatinine": (0, 40), "wbc": (0, 500), "bun": (0, 300),
    "sodium": (80, 200), "potassium": (0.5, 15), "glucose": (0, 3000), "hemoglobin": (0, 30),
    "platelets": (0, 3000), "bicarbonate": (0, 80),
}

VITAL_STATS = ("mean", "min", "max", "last")
LAB_STATS = ("last", "max")
