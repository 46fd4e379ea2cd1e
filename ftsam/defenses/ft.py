"""FT: plain fine-tuning on the defender's clean subset."""
from ftsam.defenses.base import Defense


class FT(Defense):
    name, title = "ft", "FT"
