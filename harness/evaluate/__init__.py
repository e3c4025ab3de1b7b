"""Accuracy: COCO AP with pycocotools (and, later, alignment with the reference)."""
