"""The refinement's own copy of the decoder (pipeline.lib.search_decoder.inference_decoder): batch norms folded
and, where it saves copies, mirrored. Either way it must decode what the model's decoder does."""

from __future__ import annotations

import pytest
import torch

from pipeline.lib import search_decoder
from pipeline.lib.config import VariantSpec
from pipeline.lib.models import build_model
from tests.conftest import TINY_SPEC

STUDY_LIKE = {**TINY_SPEC, "encoder_strides": [1, 2], "decoder_filters": [8, 8, 4], "decoder_strides": [1, 2, 1]}


def trained_looking(spec: dict) -> torch.nn.Module:
    """A model in eval mode whose batch norms hold statistics and whose biases are not zero, as after training."""
    torch.manual_seed(0)
    model = build_model(VariantSpec(**spec))
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5), module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5), module.bias.uniform_(-0.2, 0.2)
            elif getattr(module, "bias", None) is not None:
                module.bias.uniform_(-0.2, 0.2)
    return model.eval()


@pytest.mark.parametrize(
    "spec, mirrored",
    [
        (STUDY_LIKE, True),  # TensorFlow's padding, kernel 3 stride 2: keeps the first rows of its full output
        ({**STUDY_LIKE, "decoder_strides": [2, 1, 1]}, True),  # the upsampling first, as model04
        ({**STUDY_LIKE, "norm": "batch", "activation": "silu"}, True),  # model01_bn's kind
        ({**STUDY_LIKE, "norm": "group", "residual": True}, True),  # layers inside residual blocks
        ({**STUDY_LIKE, "kernel_size": 5}, True),
        ({**STUDY_LIKE, "kernel_size": 4}, False),  # a stride-1 layer drops 1 row before, 2 after: no mirrored padding
        ({**STUDY_LIKE, "padding": "symmetric"}, False),  # PyTorch's own padding already
    ],
)
def test_the_search_decoder_decodes_as_the_model_does(spec, mirrored):
    model = trained_looking(spec)
    decoder, was_mirrored = search_decoder.inference_decoder(model)
    z = torch.randn(6, model.spec.latent_dim)
    with torch.no_grad():
        expected, decoded = model.decode(z), decoder(z)
    assert was_mirrored is mirrored
    torch.testing.assert_close(decoded.flip(-2, -1) if mirrored else decoded, expected, rtol=0, atol=1e-5)
    assert all(not p.requires_grad for p in decoder.parameters())
    assert all(
        torch.equal(a, b)
        for a, b in zip(model.decoder.state_dict().values(), trained_looking(spec).decoder.state_dict().values())
    )
