"""The method registry: one entry per method, torch-free, read by the CLI, config and sidecars."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import pytest

from bids_denoise import config
from bids_denoise.cli.parser import _build_parser
from bids_denoise.denoise.methods import METHODS, all_options, denoising_parameters, get_method
from bids_denoise.denoise.methods.base import Option


def test_importing_the_registry_loads_neither_torch_nor_nipype():
    code = ("import sys, bids_denoise.denoise.methods, bids_denoise.cli.parser; "
            "print('torch' in sys.modules, 'nipype' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "False"]


def test_the_cli_offers_every_method_and_every_flagged_option():
    parser = _build_parser()
    flags = {flag for action in parser._actions for flag in action.option_strings}
    method_action = next(a for a in parser._actions if a.dest == "method")
    assert tuple(method_action.choices) == tuple(METHODS)
    for method in METHODS.values():
        for option in method.options:
            if option.flag:
                assert option.flag in flags
                help_text = next(a.help for a in parser._actions if option.flag in a.option_strings)
                assert help_text.startswith(option.help) and "Default:" in help_text


def test_every_option_is_a_config_setting_with_its_default():
    for name, option in all_options().items():
        assert name in config.workflow._fields()
        assert getattr(config.workflow, name) == option.default
        assert option.coerce(option.default) == option.default


@pytest.mark.parametrize("option, good, bad", [
    (Option("x", None, "", default=1.0, kind="float", minimum=0.0, positive=True), [0.5, "2"], [0, -1, "a", True]),
    (Option("x", None, "", default=2, kind="int", minimum=1, maximum=4), [1, "4", 3.0], [0, 5, 2.5, "x"]),
    (Option("x", None, "", default="a", kind="choice", choices=("a", "b")), ["b"], ["c", None]),
    (Option("x", None, "", default=(0, 0, 0), kind="radius", minimum=0, maximum=3), [1, (1, 0, 2)], [4, (1, 2), -1]),
])
def test_option_values_are_checked(option, good, bad):
    for value in good:
        option.coerce(value)
    for value in bad:
        with pytest.raises(ValueError, match="workflow.x"):
            option.coerce(value)


def test_interface_inputs_and_sidecar_parameters_come_from_the_options():
    p2s = get_method("patch2self")
    settings = SimpleNamespace(**{**{o.name: o.default for o in p2s.options}, "patch_radius": (1, 1, 0)})
    inputs = p2s.interface_inputs(settings)
    assert inputs["patch_radius"] == [1, 1, 0] and inputs["model"] == "ols"
    assert set(inputs) == {o.interface for o in p2s.options if o.interface}
    interface = p2s.interface_class()(**inputs)  # every input exists on the interface
    assert interface.inputs.patch_radius == [1, 1, 0]
    parameters = denoising_parameters(SimpleNamespace(
        method="patch2self", b0_threshold=50, shell_grouping="all", shell_tolerance=100, b0_denoising=True,
        **vars(settings)))
    assert list(parameters)[:4] == ["B0Threshold", "ShellGrouping", "ShellTolerance", "B0Denoising"]
    assert parameters["PatchRadius"] == [1, 1, 0] and parameters["PatchPooling"] == "radial"  # the default


def test_ddm2_options_left_unset_keep_the_presets():
    ddm2 = get_method("ddm2")
    settings = SimpleNamespace(**{o.name: o.default for o in ddm2.options})
    inputs = ddm2.interface_inputs(settings)
    assert "stage1_steps" not in inputs and inputs["preset"] == "fast"
    ddm2.interface_class()(**inputs)


def test_unknown_method_names_the_known_ones():
    with pytest.raises(ValueError, match="patch2self, mppca, ddm2"):
        get_method("nlmeans")


def test_each_method_cites_only_references_of_the_bibliography():
    import re

    from bids_denoise.denoise.methods import all_options
    from bids_denoise.reports.boilerplate import bibtex

    entries = bibtex()
    settings = SimpleNamespace(**{o.name: o.default for o in all_options().values()}, device="cpu")
    for method in METHODS.values():
        settings.method = method.name
        keys = re.findall(r"@([A-Za-z0-9_-]+)", " ".join(re.findall(r"\[(@[^]]+)\]", method.sentence(settings))))
        assert keys, method.name
        for key in keys:
            assert f"{{{key}," in entries, (method.name, key)
        own = re.findall(r"@\w+\{([^,]+),", method.bibtex)
        assert set(own) <= set(keys) | {"corderogrande2019"}, method.name  # no uncited entries
