"""The quantities behind Figures 1-6: TAC, channel norms, gradient recording, Grad-CAM mass."""
import torch
from torch import nn

from ftsam import analysis, plots


class TwoChannel(nn.Module):
    """conv with two output channels: channel 0 sees only the bottom-right pixel, channel 1 only the top-left."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1, bias=False)
        with torch.no_grad():
            self.conv.weight[:] = torch.tensor([1.0, 2.0]).view(2, 1, 1, 1)
        self.head = nn.Linear(2, 2)

    def penultimate(self, x):
        return self.conv(x).mean((2, 3))

    def forward(self, x):
        return self.head(self.penultimate(x))


def test_tac_is_the_mean_spatial_norm_of_the_activation_change():
    m = TwoChannel()
    clean = torch.zeros(4, 1, 3, 3, dtype=torch.uint8)
    trig = clean.clone()
    trig[:, :, 2, 2] = 255                        # a one-pixel trigger of value 1.0
    t = analysis.tac(m, "conv", clean, trig)
    # channel c's activation changes by weight_c * 1.0 at one pixel: spatial l2 norm = weight_c
    assert torch.allclose(t, torch.tensor([1.0, 2.0]))


def test_channel_norms_and_spearman():
    w = torch.zeros(3, 2, 1, 1)
    w[0, 0], w[1, 1], w[2] = 3.0, 4.0, 1.0
    assert torch.allclose(analysis.channel_norms(w), torch.tensor([3.0, 4.0, 2 ** 0.5]))
    assert analysis.spearman(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([10.0, 20.0, 30.0])) == 1.0
    assert analysis.spearman(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([3.0, 2.0, 1.0])) == -1.0


def test_first_batch_grad_norms_records_only_first_batches_of_first_epochs():
    m = TwoChannel()
    rec = analysis.FirstBatchGradNorms("conv", epochs=2)
    m.conv.weight.grad = torch.ones_like(m.conv.weight)
    for epoch in range(4):
        for it in range(3):
            m.conv.weight.grad.fill_(10 * epoch + it + 1)
            rec(epoch, it, m)
    assert sorted(rec.norms) == [0, 1]
    assert torch.allclose(rec.norms[1], torch.tensor([11.0, 11.0]))


def test_unknown_layer_names_the_convolutions():
    try:
        analysis.layer(TwoChannel(), "layer9")
    except KeyError as e:
        assert "conv" in str(e)
    else:
        raise AssertionError("no error")


def test_region_mass():
    maps = torch.zeros(2, 4, 4)
    maps[0, 3, 3] = 1.0
    maps[1] = 1.0
    region = torch.zeros(4, 4, dtype=torch.bool)
    region[3, 3] = True
    assert torch.allclose(analysis.region_mass(maps, region), torch.tensor([1.0, 1 / 16]))


def test_gradcam_maps_have_image_shape():
    from ftsam.config import ModelConfig
    from ftsam.data import DatasetInfo
    from ftsam.models import build_model
    torch.manual_seed(0)
    info = DatasetInfo("digits", 1, 16, 10, (0.5,), (0.5,))
    model = build_model(ModelConfig(width=4), info)
    x = torch.randint(0, 256, (3, 1, 16, 16), dtype=torch.uint8)
    maps = analysis.gradcam(model, x, "layer3")
    assert maps.shape == (3, 16, 16) and maps.min() >= 0 and maps.max() <= 1


def test_figure_panels():
    order = torch.arange(16)
    fig = plots.neuron_panels({e: torch.rand(16) for e in range(8)}, order, {}, "grad")
    assert sum(ax.get_visible() and ax.axison for ax in fig.axes) == 8
    fig = plots.sweep([0.1, 1.0], {"a": {"acc": [1, 2], "asr": [3, 4]}})
    assert len(fig.axes) == 2
