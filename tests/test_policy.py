"""PrecisionPolicy: specs, JSON round trip, resolution against a model, and every rejection."""

from __future__ import annotations

import json

import pytest
import torch.nn as nn

from boundfinder import PolicyError, parse_format
from boundfinder.policy import ROLES, PrecisionPolicy, Rule, layer_modules


def net() -> nn.Module:
    model = nn.Module()
    model.features = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU())
    model.attn_proj = nn.Linear(4, 4)
    model.fc1 = nn.Linear(4, 3)
    model.fc2 = nn.Linear(3, 2)
    return model


def test_single_format_means_every_layer_every_role():
    plan = PrecisionPolicy.from_spec("e8m3").resolve(net())
    assert sorted(plan) == ["attn_proj", "fc1", "fc2", "features.0", "features.1"]
    assert all(tuple(roles) == ROLES for roles in plan.values())
    assert {str(f) for roles in plan.values() for f in roles.values()} == {"e8m3"}


def test_roles_subset_and_format_instance():
    fmt = parse_format("e4m3fn")
    plan = PrecisionPolicy.from_spec(fmt, roles=("weight", "activation")).resolve(net())
    assert all(set(roles) == {"weight", "activation"} for roles in plan.values())


def test_dict_spec_patterns_select_layers_and_subtrees():
    policy = PrecisionPolicy.from_spec({"features": "e5m2", "*attn*": "e4m3fn", "fc*": {"weight": "int8"}})
    plan = policy.resolve(net())
    assert str(plan["features.0"]["grad_input"]) == "e5m2"  # an ancestor's name matches: the whole subtree
    assert str(plan["features.1"]["activation"]) == "e5m2"
    assert str(plan["attn_proj"]["bias"]) == "e4m3fn"
    assert {name: list(roles) for name, roles in plan.items() if name.startswith("fc")} == {
        "fc1": ["weight"],
        "fc2": ["weight"],
    }


def test_module_type_rules_by_class_and_by_name():
    by_class = PrecisionPolicy(rules=(Rule(module_type=nn.Linear, formats={"weight": "e5m2"}),))
    by_name = PrecisionPolicy(rules=(Rule(module_type="Linear", formats={"weight": "e5m2"}),))
    dotted = PrecisionPolicy(rules=(Rule(module_type="torch.nn.modules.linear.Linear", formats={"weight": "e5m2"}),))
    expected = ["attn_proj", "fc1", "fc2"]
    for policy in (by_class, by_name, dotted):
        assert sorted(policy.resolve(net())) == expected
    both = PrecisionPolicy(rules=(Rule(pattern="fc*", module_type=nn.Linear, formats={"weight": "e5m2"}),))
    assert sorted(both.resolve(net())) == ["fc1", "fc2"]


def test_json_round_trip():
    policy = PrecisionPolicy(
        rules=(
            Rule(pattern="fc*", formats={"weight": "int8", "activation": "e5m2"}),
            Rule(module_type=nn.Conv2d, formats={"grad_output": "mxfp8_e4m3"}),
        ),
        rounding="stochastic",
    )
    data = json.loads(json.dumps(policy.to_dict()))
    back = PrecisionPolicy.from_dict(data)
    assert back.to_dict() == policy.to_dict()
    assert back.rules[0] == policy.rules[0]
    assert back.resolve(net()).keys() == policy.resolve(net()).keys()  # a class name still matches


def test_from_spec_returns_policy_as_is_and_rules_do_not_keep_caller_dict():
    formats = {"weight": "e5m2"}
    rule = Rule(formats=formats)
    formats["weight"] = "int8"
    assert str(rule.formats["weight"]) == "e5m2"
    policy = PrecisionPolicy(rules=(rule,))
    assert PrecisionPolicy.from_spec(policy) is policy
    with pytest.raises(TypeError):
        rule.formats["bias"] = parse_format("e5m2")


def test_layer_modules_are_leaves_and_parameter_owners():
    class Owner(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(nn.init.ones_(nn.Parameter(nn.Linear(1, 1).weight.detach().clone())))
            self.inner = nn.Linear(2, 2)

    model = nn.Sequential(Owner(), nn.Sequential(nn.ReLU()))
    assert sorted(layer_modules(model)) == ["0", "0.inner", "1.0"]


# -- rejections --------------------------------------------------------------------------------------------------
def test_unknown_pattern_names_the_existing_modules():
    with pytest.raises(PolicyError, match="matches no module") as info:
        PrecisionPolicy.from_spec({"conv*": "e5m2"}).resolve(net())
    for name in ("'features.0'", "'attn_proj'", "'fc1'", "'fc2'"):
        assert name in str(info.value)


def test_conflicting_rules_say_which():
    policy = PrecisionPolicy.from_spec({"fc*": "e5m2", "fc1": {"weight": "int8"}})
    with pytest.raises(PolicyError, match=r"conflicting rules for layer 'fc1', role 'weight'.*fc\*.*e5m2.*int8"):
        policy.resolve(net())
    # the same format from two rules is not a conflict
    PrecisionPolicy.from_spec({"fc*": "e5m2", "fc1": {"weight": "e5m2"}}).resolve(net())


def test_invalid_role_and_invalid_format_for_role():
    with pytest.raises(PolicyError, match=r"unknown tensor role 'weights'.*valid roles are weight, bias"):
        PrecisionPolicy.from_spec({"fc1": {"weights": "e5m2"}})
    with pytest.raises(PolicyError, match=r"binary.*not valid for role 'grad_output'"):
        PrecisionPolicy.from_spec({"fc1": {"grad_output": "binary"}})
    with pytest.raises(PolicyError, match=r"binary.*not valid for role 'grad_output'.*roles="):
        PrecisionPolicy.from_spec("binary")  # every role includes gradients
    PrecisionPolicy.from_spec("binary", roles=("weight", "activation")).resolve(net())
    with pytest.raises(PolicyError, match=r"invalid format 'e9m99'"):
        PrecisionPolicy.from_spec("e9m99")
    with pytest.raises(PolicyError, match=r"roles must be a non-empty subset"):
        PrecisionPolicy.from_spec("e5m2", roles=("weight", "gradient"))


def test_no_matching_layer_and_malformed_inputs():
    with pytest.raises(PolicyError, match=r"selects no layer.*fc1 \(Linear\)"):
        PrecisionPolicy(rules=(Rule(module_type=nn.LSTM, formats={"weight": "e5m2"}),)).resolve(net())
    model = nn.Linear(3, 2)
    PrecisionPolicy.from_spec("int8_ch1", roles=("weight",)).resolve(model)  # the weight has axis 1...
    with pytest.raises(PolicyError, match=r"role 'bias' works along axis 1.*shape \(2,\)"):
        PrecisionPolicy.from_spec("int8_ch1", roles=("weight", "bias")).resolve(model)  # ...the bias does not
    with pytest.raises(PolicyError, match="rounding must be one of"):
        PrecisionPolicy.from_spec("e5m2", rounding="banker")
    with pytest.raises(PolicyError, match="a policy spec must be"):
        PrecisionPolicy.from_spec(8)
    with pytest.raises(PolicyError, match="non-empty sequence of Rule"):
        PrecisionPolicy(rules=())
    with pytest.raises(PolicyError, match="non-empty mapping"):
        Rule(pattern="fc1", formats={})
