"""The execution plan (plan.py): weight-shared branches run as one batch,
with the same losses and gradients as one by one, and every named blob
still showing its own values."""

import numpy as np
import pytest

import layergraph as lg
from layergraph.prototxt import parse_net
from layergraph.tools.evaluate import new_from_template


def _step(model, batch_branches):
    net = lg.Net(model, lg.TRAIN, seed=3, batch_branches=batch_branches)
    net.clear_param_diffs()
    loss = net.forward_backward()
    out = (loss, [b.diff.copy() for b in net.learnable_params],
           {name: blob.data.copy() for name, blob in net.blobs.items()}, net.describe_plan())
    net.close()
    return out


@pytest.mark.parametrize("template,k", [("TripletNet_28x28", 3), ("Siamese_28x28", 2)])
def test_templates_batch_their_towers_with_identical_results(template, k, db, tmp_path):
    new_from_template(template, "TINY", str(tmp_path / "run"))
    model = str(tmp_path / "run" / "train_val.prototxt")
    loss0, grads0, blobs0, plan0 = _step(model, False)
    loss1, grads1, blobs1, plan1 = _step(model, True)
    assert "every layer on its own" in plan0[0]
    assert f"{k} weight-shared branches as one batch (8 stages)" in plan1[0]
    assert loss1 == pytest.approx(loss0, rel=1e-6)
    for a, b in zip(grads1, grads0):
        # (biases of a distance loss have zero gradient: only rounding noise is left)
        assert float(np.abs(a - b).max()) <= 1e-5 * float(np.abs(b).max()) + 1e-7
    assert blobs1.keys() == blobs0.keys()
    for name in blobs0:  # every named top shows its own branch's values
        np.testing.assert_allclose(blobs1[name], blobs0[name], rtol=1e-5, atol=1e-6,
                                   err_msg=name)


TOWERS = """
layer { name: "in" type: "Input" top: "a" top: "b" top: "c"
        input_param { shape { dim: 5 dim: 2 dim: 6 dim: 6 } shape { dim: 5 dim: 2 dim: 6 dim: 6 }
                      shape { dim: 5 dim: 2 dim: 6 dim: 6 } } }
layer { name: "conv_a" type: "Convolution" bottom: "a" top: "ca" param { name: "w" } param { name: "b" }
        convolution_param { num_output: 3 kernel_size: 3 weight_filler { type: "xavier" } } }
layer { name: "conv_b" type: "Convolution" bottom: "b" top: "cb" param { name: "w" } param { name: "b" }
        convolution_param { num_output: 3 kernel_size: 3 weight_filler { type: "xavier" } } }
layer { name: "drop_a" type: "Dropout" bottom: "ca" top: "da" }
layer { name: "drop_b" type: "Dropout" bottom: "cb" top: "db" }
layer { name: "conv_c" type: "Convolution" bottom: "c" top: "cc"
        convolution_param { num_output: 3 kernel_size: 3 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "da" bottom: "db" top: "loss" }
layer { name: "silence" type: "Silence" bottom: "cc" }
"""


def test_only_shared_weights_and_batch_independent_layers_are_batched():
    net = lg.Net(parse_net(TOWERS), lg.TRAIN)
    assert len(net.chains) == 1
    chain = net.chains[0]
    names = [[net.layer_names[j] for j in stage] for stage in chain.stages]
    assert names == [["conv_a", "conv_b"]]  # not conv_c (own weights), not Dropout
    x = np.random.default_rng(0).standard_normal((3, 5, 2, 6, 6)).astype(np.float32)
    net.forward(a=x[0], b=x[1], c=x[2])
    ref = lg.Net(parse_net(TOWERS), lg.TRAIN, batch_branches=False)
    ref.forward(a=x[0], b=x[1], c=x[2])
    for name in ("ca", "cb", "cc"):
        np.testing.assert_allclose(net.blobs[name].data, ref.blobs[name].data, rtol=1e-5,
                                   atol=1e-6)


def test_branches_of_different_batch_sizes_run_one_by_one():
    text = TOWERS.split('layer { name: "loss"')[0] + \
        'layer { name: "silence" type: "Silence" bottom: "da" bottom: "db" bottom: "cc" }'
    net = lg.Net(parse_net(text), lg.TRAIN)
    ref = lg.Net(parse_net(text), lg.TRAIN, batch_branches=False)
    assert len(net.chains) == 1
    rng = np.random.default_rng(1)
    a, c = (rng.standard_normal((5, 2, 6, 6)).astype(np.float32) for _ in range(2))
    b = rng.standard_normal((4, 2, 6, 6)).astype(np.float32)
    for n in (net, ref):
        n.forward(a=a, b=b, c=c)
    assert net._ran_batched == {id(net.chains[0]): False}
    for name in ("ca", "cb", "cc"):
        np.testing.assert_allclose(net.blobs[name].data, ref.blobs[name].data, rtol=1e-5,
                                   atol=1e-6)
    net.forward(a=a, b=a, c=c)  # equal shapes again: batched
    assert net._ran_batched == {id(net.chains[0]): True}
    ref.forward(a=a, b=a, c=c)
    np.testing.assert_allclose(net.blobs["cb"].data, ref.blobs["cb"].data, rtol=1e-5, atol=1e-6)
