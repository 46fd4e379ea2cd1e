"""FT-SAM (Zhu et al., ICCV 2023): fine-tuning with adaptive sharpness-aware minimization.
See :mod:`ftsam.sam` for the step."""
from ftsam.defenses.base import Defense


class FTSAM(Defense):
    name, title = "ft_sam", "FT-SAM"

    def fit_options(self):
        return {"sam": self.cfg.sam}
