"""Class names and their order: the one contract between model and app."""

# Classifier output order. "other" = immature granulocytes, nucleated red cells,
# platelets, smudges, artefacts: never part of the five-part differential.
CLASSES = ("neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil", "other")
FIVE_PART = CLASSES[:5]
OTHER = "other"
CLASS_INDEX = {name: i for i, name in enumerate(CLASSES)}

# BGR colours for drawing boxes and bars (OpenCV order), one per class.
CLASS_COLOURS_BGR = {
    "neutrophil": (60, 180, 75),
    "lymphocyte": (200, 130, 0),
    "monocyte": (180, 30, 145),
    "eosinophil": (48, 130, 245),
    "basophil": (75, 25, 230),
    "other": (128, 128, 128),
}

# A reviewer's verdict "not a leukocyte" (debris, a cell the detector should not have boxed):
# kept with the cell for site adaptation, never counted, not even as "other".
NOT_LEUKOCYTE = "x"
REVIEW_LABELS = CLASSES + (NOT_LEUKOCYTE,)
