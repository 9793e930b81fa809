"""The commands the install puts on the PATH: each names a ``cli`` that parses its own flags and calls ``main``."""
from importlib import import_module, metadata

from conftest import ROOT


def test_every_installed_command_is_a_script_with_a_parser():
    scripts = {ep.name: ep.value for ep in metadata.distribution("facetune").entry_points
               if ep.group == "console_scripts"}
    assert {"facetune-search", "facetune-train", "facetune-inspect", "facetune-export", "facetune-predict"} <= set(scripts)
    for command, target in scripts.items():
        module_name, function = target.split(":")
        module = import_module(module_name)
        assert function == "cli" and callable(module.cli), target
        # the module is also a script: the path users run with python, whose parser is the command's
        assert (ROOT / (module_name.replace(".", "/") + ".py")).is_file()
        assert module.get_args_parser().description, f"{command} --help says nothing about what it does"
