"""One typed request per command (CTDiffusionLib/requests.py): every field of every command survives the trip the
Slicer module's requests take (request -> child command line -> the child's parser -> request) and back, and a
value the command line would refuse is refused where the request is made."""

from __future__ import annotations

import dataclasses

import pytest

from CTDiffusionLib.cli import build_parser
from CTDiffusionLib.jobs.commands import build_command
from CTDiffusionLib.requests import REQUESTS, GenerateRequest, TrainRequest, request_from


def _minimal(request_type) -> dict:
    """The required fields, filled."""
    values = {}
    for f in dataclasses.fields(request_type):
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            opt = f.metadata["cli"]
            choices = opt.choices() if callable(opt.choices) else opt.choices
            values[f.name] = choices[0] if choices else ("3" if opt.parse else f"{f.name}-value")
            if opt.parse:
                values[f.name] = opt.parse(values[f.name])
    return values


def _sample(request_type, f) -> object:
    """A value for `f` that is not its default and that the field accepts."""
    opt = f.metadata["cli"]
    if opt.switch:
        return True
    choices = opt.choices() if callable(opt.choices) else opt.choices
    candidates = list(choices) if choices else ["7", "0.5", "48x48x12", f"{f.name}-value"]
    for text in reversed(candidates) if choices else candidates:
        try:
            value = opt.parse(text) if opt.parse else text
        except Exception:
            continue
        value = [value, f"{value}-2"] if opt.many else value
        if value != f.default:
            return value
    raise AssertionError(f"no sample value for {request_type.COMMAND} {f.name}")


def _child_argv(request) -> list[str]:
    argv = build_command(request, in_slicer=False).argv
    return argv[argv.index("-m") + 2:]


def _cases():
    for command, request_type in REQUESTS.items():
        for f in dataclasses.fields(request_type):
            yield pytest.param(request_type, f, id=f"{command}-{f.name}")


@pytest.mark.parametrize("request_type, f", list(_cases()))
def test_every_field_goes_to_the_child_and_comes_back(request_type, f):
    values = {**_minimal(request_type), f.name: _sample(request_type, f)}
    needs = f.metadata["cli"].needs
    if needs:
        values[needs] = True
    request = request_type(**values)
    argv = _child_argv(request) if hasattr(request, "out") else request.argv()
    parsed = request_from(build_parser().parse_args(argv))
    expected = dataclasses.replace(request, events=True) if hasattr(request, "events") else request
    assert parsed == expected and getattr(parsed, f.name) == values[f.name]
    assert parsed.argv() == argv  # and back: the parsed request asks for exactly the same


@pytest.mark.parametrize("command", list(REQUESTS))
def test_defaults_are_the_parsers_defaults(command):
    request_type = REQUESTS[command]
    minimal = request_type(**_minimal(request_type))
    parsed = request_from(build_parser().parse_args(minimal.argv()))
    assert parsed == minimal  # nothing sent, the same defaults come back


@pytest.mark.parametrize("command", list(REQUESTS))
def test_every_commands_help_names_every_field(command, capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args([command, "--help"])
    text = capsys.readouterr().out
    assert exc.value.code == 0
    for f in dataclasses.fields(REQUESTS[command]):
        assert f.metadata["cli"].flag(f.name) in text


def test_panel_values_are_made_canonical_and_checked_where_the_request_is_made():
    request = TrainRequest(profile="prostate-ct", data="one-folder", out="r", grid=(48, 48, 12),
                           augment=(), conditions=("group", "phase"), minutes=30)
    assert (request.data, request.grid, request.augment, request.conditions) == (
        ["one-folder"], "48x48x12", "none", "group,phase")
    assert GenerateRequest(model="m", out="o", condition={"group": "DCM", "phase": ""}, sampler="").condition \
        == "group=DCM"  # an empty combo is "not set"
    for bad, message in [({"minutes": 0}, "--minutes"), ({"lr": float("nan")}, "--lr"),
                         ({"cond_drop": 1.0}, "--cond-drop"), ({"schedule": "quadratic"}, "--schedule"),
                         ({"steps": 3, "epochs": 2}, "one of epochs, steps or minutes"),
                         ({"structures": "prostate"}, "--structures needs --with-labels"),
                         ({"accept_changed_data": True}, "--accept-changed-data needs --resume"),
                         ({"data": []}, "--data needs at least one value")]:
        with pytest.raises(ValueError, match=message):
            TrainRequest(**{"profile": "prostate-ct", "data": ["d"], "out": "r", **bad})


def test_a_rule_between_fields_exits_2_on_the_command_line(tmp_path, capsys):
    from CTDiffusionLib.cli import main

    assert main(["train", "--profile", "prostate-ct", "--out", str(tmp_path / "r"), "--structures", "x"]) == 2
    assert "--structures needs --with-labels" in capsys.readouterr().err and not (tmp_path / "r").exists()
