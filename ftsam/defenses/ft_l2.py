"""FT with an l2 weight penalty: min E[l(f_w(x), y)] + gamma ||w||^2 (supplement eq. 6)."""
from ftsam.defenses.base import Defense


class FTL2(Defense):
    name, title = "ft_l2", "FT-l2"

    def fit_options(self):
        return {"l2_gamma": self.cfg.l2_gamma}
