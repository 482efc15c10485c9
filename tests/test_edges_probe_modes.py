"""grads_into.edges_as_outputs is probed once per process and kept: probed first under
torch.inference_mode or a default device of "meta" (a user's call, or a library's inside such a
context), the answer was False (or a failure) for the rest of the process, and every
double_backprop product then kept its gradient's values alive until the backward. Truth: the
probe's answer outside any such context, in the same torch."""
from __future__ import annotations

import torch

from catapult.curvature.grads_into import edges_as_outputs


def _fresh():
    edges_as_outputs.cache_clear()
    return edges_as_outputs()


def test_the_probe_answers_alike_under_inference_mode_and_a_meta_default_device():
    plain = _fresh()
    try:
        with torch.inference_mode():
            edges_as_outputs.cache_clear()
            in_inference = edges_as_outputs()
        with torch.device("meta"):
            edges_as_outputs.cache_clear()
            on_meta = edges_as_outputs()
    finally:
        edges_as_outputs.cache_clear()
    assert in_inference == plain and on_meta == plain
    assert _fresh() == plain


def test_graph_handles_are_gradient_edges_where_backward_takes_them():
    # graph_handles gives the outputs' gradient edges (their values can then be freed while the
    # graph lives) exactly where this torch's backward takes an edge, else the tensors themselves
    from torch.autograd.graph import GradientEdge

    from catapult.curvature.grads_into import backward_into, graph_handles

    w = torch.zeros(2, requires_grad=True)
    y = w @ torch.tensor([3.0, 4.0])
    handles = graph_handles([y])
    assert isinstance(handles[0], GradientEdge) == _fresh()
    out = torch.zeros(2)
    backward_into([w], [out], handles, [torch.tensor(1.0)], False)
    assert out.tolist() == [3.0, 4.0]
