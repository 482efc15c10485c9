"""parametrize() on users' models: argument checks, embeddings with padding, re-parametrizing,
models whose only weight layer is the readout, and param_groups through wrappers."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import catapult


def mlp(width: int = 16) -> nn.Sequential:
    return nn.Sequential(nn.Linear(4, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                         nn.Linear(width, 1))


@pytest.mark.parametrize("density", [0.0, -0.5, 1.5, float("inf"), float("nan")])
def test_a_density_outside_0_1_is_a_value_error_naming_it(density):
    # It was a ZeroDivisionError (0), 'math domain error' (< 0), a torch RuntimeError (NaN), or
    # silently accepted (> 1: a "supar" model with density_mult 1.5 and hidden lr / 1.5).
    with pytest.raises(ValueError, match=r"density and base_density must be in \(0, 1\]"):
        catapult.parametrize(mlp(), "supar", base_width=4, density=density)


def test_density_is_checked_even_without_hidden_layers():
    with pytest.raises(ValueError, match="density"):
        catapult.parametrize(nn.Sequential(nn.Linear(3, 5), nn.Linear(5, 2)), "supar", density=0.0)


def test_a_nan_base_width_is_a_value_error_naming_it():
    with pytest.raises(ValueError, match="base_width must be a finite number > 0"):
        catapult.parametrize(mlp(), "mup", base_width=float("nan"))


def _lrs(model: nn.Module) -> dict[str, float]:
    return {g["name"]: g["lr"] for g in catapult.param_groups(model, 0.01, "adam")}


def test_param_groups_of_a_data_parallel_model_are_the_wrapped_models():
    torch.manual_seed(0)
    model = catapult.models.MLP(4, 2, width=64, depth=3, parametrization="mup", base_width=16)
    assert _lrs(model)["hidden"] == pytest.approx(0.01 / 4)           # muP Adam: lr / m_d
    assert _lrs(nn.DataParallel(model)) == _lrs(model)                # it was lr everywhere (SP)
    user = catapult.parametrize(mlp(64), "mup", base_width=16)
    assert _lrs(nn.DataParallel(user)) == _lrs(user)


def test_param_groups_of_a_ddp_model_are_the_wrapped_models():
    from catapult.curvature.distributed import single_process_group
    model = catapult.models.MLP(4, 2, width=64, depth=3, parametrization="supar", base_width=16,
                                density=0.5, mask_seed=0)
    with single_process_group():
        ddp = nn.parallel.DistributedDataParallel(model)
        lrs = _lrs(ddp)
        del ddp  # its reducer holds the group: it goes first
    assert lrs == _lrs(model)
    assert lrs["hidden"] == pytest.approx(0.01 / (4 * 0.5))  # SμPar Adam: lr / (m_d m_rho)



class PaddedLM(nn.Module):
    def __init__(self, tied: bool = False):
        super().__init__()
        self.emb = nn.Embedding(10, 16, padding_idx=0)
        self.fc = nn.Linear(16, 16)
        self.out = nn.Linear(16, 10, bias=False)
        if tied:
            self.out.weight = self.emb.weight

    def forward(self, idx):
        return self.out(torch.relu(self.fc(self.emb(idx))))


@pytest.mark.parametrize("kwargs", [{}, {"init_std": 0.02}])
@pytest.mark.parametrize("tied", [False, True])
def test_an_embeddings_padding_row_stays_zero(kwargs, tied):
    torch.manual_seed(0)
    model = catapult.parametrize(PaddedLM(tied), "mup", base_width=4, **kwargs)
    # The padding row gets no gradient: a non-zero row drawn here would be a fixed random "pad"
    # vector for ever (it was N(0, var) like the other rows).
    assert torch.count_nonzero(model.emb.weight[0]) == 0
    assert torch.count_nonzero(model.emb.weight[1:]) == 9 * 16


def test_parametrizing_again_dense_after_sparse_is_refused_not_left_half_sparse():
    torch.manual_seed(0)
    model = catapult.parametrize(mlp(32), "supar", base_width=8, density=0.25)
    # It kept the density-0.25 masks under a spec saying density_mult = 1 (dense init and lrs).
    with pytest.raises(ValueError, match=r"already have sparsity masks \(density 0.25\).*density=1.0"):
        catapult.parametrize(model, "supar", base_width=8)
    assert model.catapult_spec.density_mult == 0.25                   # refused before any change
    again = catapult.parametrize(model, "supar", base_width=8, density=0.5)   # a new density is fine
    assert again[2].density == 0.5 and again.catapult_spec.density_mult == 0.5


def test_a_sparsified_layers_pruned_weights_stay_zero_after_parametrize():
    from catapult.sparsity import sparsify_
    torch.manual_seed(0)
    model = mlp(32)
    sparsify_(model[0], 0.5, generator=torch.Generator().manual_seed(0))   # a sparse input layer
    catapult.parametrize(model, "mup", base_width=8)
    assert torch.count_nonzero(model[0].weight[~model[0].mask]) == 0  # it was re-drawn dense
    assert torch.equal(model[0].weight != 0, model[0].mask)


def test_a_refused_hidden_conv_mask_leaves_the_model_untouched():
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Conv2d(4, 4, 3), nn.Flatten(), nn.Linear(4, 2))
    before = [p.clone() for p in net.parameters()]
    with pytest.raises(ValueError, match="hidden nn.Conv2d"):
        catapult.parametrize(net, "supar", density=0.5)
    assert type(net[0]) is nn.Conv2d                                  # it was a ScaledConv2d, re-drawn
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))


def test_without_an_input_layer_the_width_is_the_readouts_input_width():
    net = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10))
    catapult.parametrize(net, "mup", base_width=64, roles={"0": None})  # a user's own first layer
    # m_d = 256 / 64 = 4 and the readout multiplier 1 / m_d; it took the 10 classes as the width
    # (m_d = 10 / 64, multiplier 6.4).
    assert net.catapult_spec.width_mult == 4.0 and net[2].multiplier == 0.25
    assert catapult.parametrize(nn.Linear(256, 10), "mup", base_width=64).catapult_spec.width_mult == 4.0
    convs = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 32, 3), nn.Conv2d(32, 5, 1))
    catapult.parametrize(convs, "mup", base_width=8, roles={"0": None, "1": None})
    assert convs.catapult_spec.width_mult == 4.0
    hidden_first = nn.Sequential(nn.Linear(3, 16), nn.Linear(16, 48), nn.Linear(48, 2))
    catapult.parametrize(hidden_first, "mup", base_width=12, roles={"0": None})  # hidden 16 -> 48
    assert hidden_first.catapult_spec.width_mult == 4.0


class Backbone(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.backbone = net

    def forward(self, x):
        return self.backbone(x)


@pytest.mark.parametrize("wrap", [lambda net: nn.Sequential(nn.Identity(), net), Backbone])
def test_param_groups_of_a_model_inside_a_container_are_the_models(wrap):
    # the spec sat on the inner model only: SP learning rates (hidden 4x too large here) for a
    # model whose forward still used muP's multipliers
    from catapult.models import MLP

    net = MLP(8, 2, width=64, depth=3, parametrization="mup", base_width=16)   # m_d = 4
    assert _lrs(net)["hidden"] == pytest.approx(0.01 / 4)
    assert _lrs(wrap(net)) == _lrs(net)


def test_a_container_of_two_parameterizations_is_refused():
    from catapult.models import MLP

    pair = nn.ModuleList([MLP(8, 2, width=64, depth=2, parametrization="mup", base_width=16),
                          MLP(8, 2, width=64, depth=2, parametrization="mup", base_width=32)])
    with pytest.raises(ValueError, match="2 different parameterizations"):
        catapult.param_groups(pair, 1.0, "adam")


def test_model_sizes_and_inputs_are_checked_with_their_names():
    # GPT(d_model=8.0) passed the check and failed inside torch.empty; MLP(width=nan) said only
    # "cannot convert float NaN to integer"; integer images gave torch's dtype errors
    from catapult.models import GPT, MLP, WRN

    assert GPT(7, d_model=8.0, n_layers=1, n_heads=2, context=4.0)(torch.zeros(1, 4, dtype=torch.long)).shape == (1, 4, 7)
    with pytest.raises(ValueError, match="MLP width must be a positive integer; got nan"):
        MLP(4, 2, width=float("nan"))
    with pytest.raises(TypeError, match="MLP expects floating-point inputs"):
        MLP(4, 2, width=8)(torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(TypeError, match="WRN expects floating-point images"):
        WRN(3, 3, depth=10, widen=1)(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))


@pytest.mark.parametrize("first", ["sparsify", "parametrize"])
def test_a_new_mask_is_drawn_on_fresh_weights_not_on_the_old_masks_zeros(first):
    # The old mask was applied to the re-drawn weights before the new mask was installed, so
    # about (1 - old density) of the new mask's live weights started at exactly 0 (density 0.25
    # twice: 268 nonzero of 1024 live, init std 0.133 for 1/sqrt(64 * 0.25) = 0.25).
    from catapult.sparsity import sparsify_
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2))
    if first == "sparsify":
        sparsify_(model[2], 0.25, generator=torch.Generator().manual_seed(1))
    else:
        catapult.parametrize(model, "supar", base_width=8, density=0.25, mask_seed=1)
    catapult.parametrize(model, "supar", base_width=8, density=0.25, mask_seed=2)
    weight, mask = model[2].weight, model[2].mask
    assert int(mask.sum()) == 1024
    assert torch.equal(weight != 0, mask)                       # every live weight drawn, pruned ones 0
    std = (1.0 / (64 * 0.25)) ** 0.5                            # gain^2 / (fan_in * m_rho), m_rho = 0.25
    assert abs(weight[mask].std().item() / std - 1) < 0.1


class _Attention(nn.Module):
    def __init__(self, d: int = 16):
        super().__init__()
        self.emb = nn.Embedding(20, d)
        self.attn = nn.MultiheadAttention(d, 2, batch_first=True)
        self.head = nn.Linear(d, 20)


def test_a_refused_layer_leaves_the_model_untouched_and_multihead_attention_is_named():
    # nn.MultiheadAttention's out_proj (a Linear subclass) was refused only after the embedding
    # before it had been converted and re-drawn; the words said its forward would be lost, but
    # the attention never calls that forward: it multiplies by the weights itself.
    torch.manual_seed(0)
    model = _Attention()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(TypeError, match=r"'attn.out_proj' is the output projection of the nn.MultiheadAttention "
                                        r"'attn'.*scale=1/d_head.*roles=\{'attn.out_proj': None\}"):
        catapult.parametrize(model, "mup", base_width=4)
    assert type(model.emb) is nn.Embedding and not hasattr(model, "catapult_spec")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    catapult.parametrize(model, "mup", base_width=4, roles={"attn.out_proj": None})   # the way out it names
    assert model.head.multiplier == 0.25


def test_a_linear_subclass_with_its_own_forward_is_refused_before_any_change():
    class Lora(nn.Linear):
        def forward(self, x):
            return super().forward(x) * 2

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), Lora(8, 8), nn.ReLU(), nn.Linear(8, 1))
    before = model[0].weight.clone()
    with pytest.raises(TypeError, match=r"'2' is a Lora .*roles=\{'2': None\}"):
        catapult.parametrize(model, "mup", base_width=2)
    assert type(model[0]) is nn.Linear and torch.equal(model[0].weight, before)


def test_a_weight_shared_by_two_hidden_layers_gets_one_mask():
    # Each layer drew its own mask and zeroed the shared weight by it: the weight kept only
    # the entries live in both (1027 of 4096 at density 0.5), so each layer started with about
    # half of its live weights at 0, and each trained entries the other one prunes.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                          nn.Linear(64, 2))
    model[4].weight = model[2].weight
    catapult.parametrize(model, "supar", base_width=8, density=0.5)
    assert torch.equal(model[2].mask, model[4].mask) and int(model[2].mask.sum()) == 2048
    assert torch.equal(model[2].weight != 0, model[2].mask)


def test_a_hidden_embedding_with_density_below_1_is_refused_not_left_dense():
    # It stayed dense (masks are for Linear layers) under SμPar's init var / m_rho and lr / m_rho.
    model = nn.Sequential(nn.Embedding(10, 16), nn.Linear(16, 16), nn.Linear(16, 2))
    with pytest.raises(ValueError, match=r"'0' is a hidden nn.Embedding"):
        catapult.parametrize(model, "supar", density=0.5, roles={"0": "hidden", "1": "input"})
    assert type(model[0]) is nn.Embedding


def test_a_weight_tied_to_a_layer_inferred_hidden_is_refused_naming_the_roles():
    # A readout registered before the body and tied to the embedding was inferred 'hidden':
    # under SμPar its mask zeroed 75% of the embedding (density 0.25), the embedding's dense
    # gradient then moved about half of the entries the mask prunes, and param_groups listed the
    # tied weight as hidden (Adam lr / (m_d m_rho)) although the embedding is an input.
    class HeadFirst(nn.Module):
        def __init__(self, vocab=50, width=64):
            super().__init__()
            self.head = nn.Linear(width, vocab, bias=False)
            self.wte = nn.Embedding(vocab, width)
            self.fc1, self.fc2 = nn.Linear(width, width), nn.Linear(width, width)
            self.head.weight = self.wte.weight

        def forward(self, x):
            return self.head(self.fc2(torch.relu(self.fc1(self.wte(x)))))

    model = HeadFirst()
    before = model.wte.weight.detach().clone()
    with pytest.raises(ValueError, match=r"'wte' \(input\), 'head' \(hidden\) share one weight.*roles=\{'head': 'output'\}"):
        catapult.parametrize(model, "supar", base_width=16, density=0.25)
    assert type(model.head) is nn.Linear and torch.equal(model.wte.weight, before)
    # with the roles given, the tie is an input and an output: the embedding stays dense
    catapult.parametrize(model, "supar", base_width=16, density=0.25, roles={"head": "output", "fc2": "hidden"})
    assert bool((model.wte.weight != 0).all()) and model.head.multiplier == 0.25
    assert model.fc1.mask.sum() == model.fc2.mask.sum() == 1024


@pytest.mark.parametrize("method", ["foo", None, "Exact"])
def test_a_bad_mask_method_is_refused_naming_it_before_any_layer_changes(method):
    # random_mask refused it at the first hidden layer ("mask method must be ..."), after the
    # input layer had been converted and re-drawn
    model = mlp()
    before = model[0].weight.detach().clone()
    with pytest.raises(ValueError, match=r"mask_method must be one of \('exact', 'bernoulli'\)"):
        catapult.parametrize(model, "supar", base_width=4, density=0.5, mask_method=method)
    assert type(model[0]) is nn.Linear and torch.equal(model[0].weight, before)


@pytest.mark.parametrize("roles", [[("0", "input")], "0", 3])
def test_roles_that_are_not_a_mapping_are_a_type_error_naming_roles(roles):
    # a list of pairs raised AttributeError: 'list' object has no attribute 'items'
    with pytest.raises(TypeError, match=r"roles must be a mapping"):
        catapult.parametrize(mlp(), "mup", base_width=4, roles=roles)


@pytest.mark.parametrize("kwargs", [{"density": torch.tensor(0.5)}, {"base_width": torch.tensor(4)},
                                    {"width": torch.tensor(16), "base_width": 4}])
def test_tensor_arguments_give_a_spec_and_learning_rates_of_plain_floats(kwargs):
    # ParamSpec(width_mult=tensor(4.)) / density_mult=tensor(0.5): the hidden group's lr and lr_mult
    # were 0-d tensors (json.dumps of the groups failed; repr showed tensor(...))
    model = catapult.parametrize(mlp(), "supar", **{"base_width": 4, **kwargs})
    spec = model.catapult_spec
    assert type(spec.width_mult) is float and type(spec.density_mult) is float
    assert spec.width_mult == 4.0 and spec.density_mult == (0.5 if "density" in kwargs else 1.0)
    groups = catapult.param_groups(model, 1e-3)
    assert all(type(g["lr"]) is float and type(g["lr_mult"]) is float for g in groups)
    assert {g["name"]: g["lr_mult"] for g in groups}["hidden"] == 1 / (4.0 * spec.density_mult)


class _HeadBeforeBody(nn.Module):
    def __init__(self, width: int = 64):
        super().__init__()
        self.pre = nn.Linear(5, 5)
        self.inp = nn.Linear(5, width)
        self.head = nn.Linear(width, 3)
        self.body = nn.Linear(width, width)

    def forward(self, x):
        return self.head(torch.relu(self.body(torch.relu(self.inp(self.pre(x))))))


def test_parametrizing_again_keeps_the_roles_given_the_first_time():
    # The second call (another density) inferred the roles by registration order again: the
    # readout became hidden (masked to density 0.5, multiplier 1) and the body the readout
    # (multiplier 1 / m_d = 0.25, dense), and the user's own first layer was re-drawn as the input.
    torch.manual_seed(0)
    model = _HeadBeforeBody()
    roles = {"pre": None, "inp": "input", "head": "output", "body": "hidden"}
    catapult.parametrize(model, "mup", base_width=16, roles=roles)
    pre = model.pre.weight.detach().clone()
    catapult.parametrize(model, "supar", base_width=16, density=0.5)
    assert {n: getattr(m, "catapult_role", None) for n, m in model.named_children()} == {
        "pre": None, "inp": "input", "head": "output", "body": "hidden"}
    assert type(model.pre) is nn.Linear and torch.equal(model.pre.weight, pre)
    assert model.head.multiplier == 0.25 and model.head.mask is None and model.body.multiplier == 1.0
    assert int(model.body.mask.sum()) == 2048
    with pytest.warns(UserWarning, match=r"\['pre.weight'\]"):   # still the user's own layer
        groups = {g["name"]: [id(p) for p in g["params"]] for g in catapult.param_groups(model, 1.0)}
    assert groups["hidden"] == [id(model.body.weight)] and groups["output"] == [id(model.head.weight)]
    # roles= still overrides a kept role
    catapult.parametrize(model, "supar", base_width=16, density=0.5, roles={"pre": "input", "inp": "hidden"})
    assert model.pre.catapult_role == "input" and model.inp.catapult_role == "hidden"


def test_a_layer_no_longer_hidden_loses_the_mask_an_earlier_call_drew_for_it():
    # Roles corrected in a second call: the readout, inferred hidden the first time, kept its
    # density-0.5 mask as the output layer (half its weights 0 for good), and the old body kept
    # nothing of its role but a dense weight.
    torch.manual_seed(0)
    model = _HeadBeforeBody()
    catapult.parametrize(model, "supar", base_width=16, density=0.5, roles={"pre": None, "inp": "input"})
    assert model.head.catapult_role == "hidden" and model.head.mask is not None       # the wrong guess
    catapult.parametrize(model, "supar", base_width=16, density=0.5, roles={"head": "output", "body": "hidden"})
    assert model.head.mask is None and bool((model.head.weight != 0).all()) and model.head.multiplier == 0.25
    assert int(model.body.mask.sum()) == 2048 and torch.equal(model.body.weight != 0, model.body.mask)
    assert model.head.masked_weight() is model.head.weight                            # trains every entry


def test_a_layer_pruned_with_torch_prune_is_refused_before_any_change():
    # torch.nn.utils.prune keeps weight_orig and recomputes .weight = weight_orig * weight_mask
    # before every forward: parametrize's init (std 0.25 here) was written into .weight and lost at
    # the first forward (back to PyTorch's default, std 0.036), and param_groups gave weight_orig
    # the 'vector' lr (Adam x1 instead of 1/m_d), with no warning.
    import torch.nn.utils.prune as prune
    torch.manual_seed(0)
    model = mlp(256)
    prune.random_unstructured(model[2], "weight", amount=0.5)
    before = model[0].weight.detach().clone()
    with pytest.raises(TypeError, match=r"weight of '2' is not a Parameter.*\['bias', 'weight_orig'\].*prune.remove"):
        catapult.parametrize(model, "supar", base_width=16, init_std=1.0)
    assert type(model[0]) is nn.Linear and torch.equal(model[0].weight, before)
    prune.remove(model[2], "weight")
    catapult.parametrize(model, "supar", base_width=16, init_std=1.0)
    model(torch.randn(2, 4))
    assert model[2].weight.std().item() == pytest.approx(0.25, rel=0.02)               # 65536 draws


def test_a_layer_pruned_with_torch_prune_after_parametrize_keeps_its_learning_rate():
    # prune after parametrize renames the weight Parameter weight_orig: param_groups listed it as
    # a 'vector' (Adam lr x1, not the hidden 1 / (m_d m_rho) = 1/2), without a warning
    import torch.nn.utils.prune as prune
    model = catapult.parametrize(mlp(64), "supar", base_width=16, density=0.5)
    prune.l1_unstructured(model[2], "weight", amount=0.25)
    groups = {g["name"]: (g["lr_mult"], [id(p) for p in g["params"]]) for g in catapult.param_groups(model, 1.0)}
    assert groups["hidden"] == (0.5, [id(model[2].weight_orig)])


def test_a_matrix_of_a_role_layer_that_is_not_its_weight_is_warned_about():
    model = catapult.parametrize(mlp(64), "mup", base_width=16)
    model[2].extra = nn.Parameter(torch.zeros(64, 64))       # a user's LoRA-like addition
    with pytest.warns(UserWarning, match=r"\['2.extra'\]"):
        catapult.param_groups(model, 1.0)


def test_a_model_whose_layers_all_have_role_none_is_told_so():
    # it was "the module has no nn.Linear / nn.Conv2d / nn.Embedding layer"
    with pytest.raises(ValueError, match=r"every layer has role None \(\['0', '2', '4'\]\)"):
        catapult.parametrize(mlp(), "mup", roles={"0": None, "2": None, "4": None})
    with pytest.raises(ValueError, match="has no nn.Linear"):
        catapult.parametrize(nn.Sequential(nn.ReLU()), "mup")



def test_a_module_holding_a_parametrized_one_infers_its_roles_afresh():
    # the earlier roles are the parametrized module's own: in a new container its readout is an
    # inner layer, hidden by the container's registration order
    inner = catapult.parametrize(mlp(32), "mup", base_width=8)
    outer = nn.Sequential(inner, nn.ReLU(), nn.Linear(1, 32), nn.ReLU(), nn.Linear(32, 3))
    catapult.parametrize(outer, "mup", base_width=8)
    assert [outer[0][i].catapult_role for i in (0, 2, 4)] == ["input", "hidden", "hidden"]
    assert outer[0][4].multiplier == 1.0 and outer[4].catapult_role == "output"
