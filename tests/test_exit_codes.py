"""The exit-code table of docs/reliability.md, enforced on every sub-command of both command lines:
0 ok, 1 data error, 2 usage error, 3 partial, 130 interrupted.

Each error class (usage error, missing file, corrupt file, unwritable output, unavailable device, Ctrl-C) is run on
every sub-command it applies to, in-process through ``main(argv)``; a few run as real processes (a real SIGINT).
Every run must end with an ``error:`` line (or argparse's usage message) and never a traceback.
:func:`test_every_sub_command_has_its_error_cases` fails when a new sub-command lacks its cases.
"""

from __future__ import annotations

import argparse
import csv
import functools
import importlib
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from gapeval import cli as gcli
from lpips_sat import cli as lcli
from lpips_sat import options
from lpips_sat.raster import read_raster, write_raster

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
SCENES = ("town", "fields", "creek_fields")
MAINS: dict[str, Callable[[list[str] | None], int]] = {"gapeval": gcli.main, "lpips-sat": lcli.main}


def run(prog: str, argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of ``prog argv`` run in this process (argparse's SystemExit included)."""
    try:
        code = MAINS[prog](argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    assert "Traceback" not in err + out, err
    return code, out, err


@functools.lru_cache(maxsize=2)
def _parser(prog: str) -> argparse.ArgumentParser:
    """The full parser of ``prog``, built once (argparse parsers can be reused)."""
    return (gcli if prog == "gapeval" else lcli).build_parser()


def parse_only(prog: str, argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    """Exit code and stderr of ``prog argv`` through the shared dispatcher with a cached parser (for values that
    must fail while parsing: nothing runs)."""
    try:
        code = lcli.dispatch(_parser(prog), argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return code, err


def sub_commands() -> dict[tuple[str, str], argparse.ArgumentParser]:
    """Every sub-command parser of both command lines, by (program, name)."""
    found = {}
    for prog, build in (("gapeval", gcli.build_parser), ("lpips-sat", lcli.build_parser)):
        sub = next(a for a in build()._actions if isinstance(a, argparse._SubParsersAction))
        found.update({(prog, name): p for name, p in sub.choices.items()})
    return found


# ------------------------------------------------------------------------------------------------ test data


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """hr/ and pred/p/ (three example scenes), bad/ (a garbage and a truncated GeoTIFF, garbage weights), a plain file."""
    root = tmp_path_factory.mktemp("exit_codes")
    for sub in ("hr", "pred/p", "bad", "hr_bad"):
        (root / sub).mkdir(parents=True)
    for name in SCENES:
        shutil.copy(EXAMPLES / "hr" / f"{name}.tif", root / "hr" / f"{name}.tif")
        shutil.copy(EXAMPLES / "pred" / "bicubic" / f"{name}.tif", root / "pred" / "p" / f"{name}.tif")
    rng = np.random.default_rng(0)
    (root / "bad" / "garbage.tif").write_bytes(rng.integers(0, 256, 4000, dtype=np.uint8).tobytes())
    whole = (EXAMPLES / "hr" / "town.tif").read_bytes()
    (root / "bad" / "truncated.tif").write_bytes(whole[: len(whole) // 2])
    (root / "bad" / "garbage.safetensors").write_bytes(rng.integers(0, 256, 4000, dtype=np.uint8).tobytes())
    (root / "bad" / "study.yaml").write_text("name: [unclosed\n")
    (root / "shard_bad").mkdir()
    (root / "shard_bad" / "pairs.csv").write_bytes(rng.integers(0, 256, 4000, dtype=np.uint8).tobytes())
    (root / "shard_bad" / "summary.json").write_bytes(rng.integers(0, 256, 400, dtype=np.uint8).tobytes())
    shutil.copy(root / "bad" / "truncated.tif", root / "hr_bad" / "town.tif")
    (root / "a_file").write_text("not a folder\n")
    return root


# ------------------------------------------------------------------------------------------------ the cases

#: Per sub-command, argv (after the sub-command name) for each error class; ``{d}`` is the data folder, ``{t}`` a
#: fresh temporary folder. A class that cannot apply to a command is ``None`` with the reason in NOT_APPLICABLE.
CASES: dict[tuple[str, str], dict[str, list[str] | None]] = {
    ("gapeval", "score"): {
        "missing": ["--pred", "{d}/nope", "--target", "{d}/hr", "--out", "{t}/o", "--weights", "random-tiny", "--no-progress"],
        "corrupt": ["--pred", "{d}/pred/p", "--target", "{d}/hr_bad", "--out", "{t}/o", "--weights", "random-tiny", "--no-progress",
                    "--allow-missing"],
        "output": None,  # --out is a file: tests/test_reliability.py (the results folder checks of gapeval score)
    },
    ("gapeval", "degrade"): {
        "missing": ["--hr", "{d}/nope", "--out", "{t}/o", "--profile", "bicubic"],
        "corrupt": ["--hr", "{d}/bad/truncated.tif", "--out", "{t}/o", "--profile", "bicubic"],
        "output": ["--hr", "{d}/hr", "--out", "{d}/a_file", "--profile", "bicubic"],
    },
    ("gapeval", "pairs"): {
        "missing": ["--hr", "{d}/nope", "--lr", "{d}/nope", "--out", "{t}/o"],
        "corrupt": ["--hr", "{d}/bad", "--lr", "{d}/hr", "--out", "{t}/o"],
        "output": ["--hr", "{d}/hr", "--lr", "{d}/hr", "--out", "{d}/a_file"],
    },
    ("gapeval", "merge"): {
        "missing": ["{d}/nope", "--out", "{t}/o"],
        "corrupt": ["{d}/shard_bad", "--out", "{t}/o"],
        "output": None,  # needs finished shards; the folder check is lpips_sat.atomic.make_folder (test_error_paths.py)
    },
    ("gapeval", "study"): {
        "missing": ["run", "{d}/nope.yaml"],
        "corrupt": ["run", "{d}/bad/study.yaml"],
        "output": None,  # runs every stage first; the folder check is lpips_sat.atomic.make_folder (test_error_paths.py)
    },
    ("gapeval", "gap"): {
        "missing": ["--run", "a={d}/nope", "--run", "b={d}/nope2", "--out", "{t}/o", "--no-images"],
        "corrupt": ["--run", "a={d}/bad/garbage.tif", "--run", "b={d}/bad/garbage.tif", "--out", "{t}/o", "--no-images"],
        "output": None,  # written last; covered by test_gap_on_a_binary_pairs_csv and test_make_folder (test_error_paths.py)
    },
    ("gapeval", "models"): {"missing": None, "corrupt": None, "output": None},
    ("gapeval", "infer"): {
        "missing": ["--model", "sr3", "--input", "{d}/nope", "--out", "{t}/o", "--checkpoint", "{d}/nope.safetensors", "--device", "cpu"],
        "corrupt": ["--model", "sr3", "--input", "{d}/hr", "--out", "{t}/o", "--checkpoint", "{d}/bad/garbage.safetensors", "--device", "cpu"],
        "output": None,  # needs a checkpoint: test_infer_partial_failure_and_interrupt
    },
    ("gapeval", "train"): {
        "missing": ["sr3", "--lr", "{d}/nope", "--hr", "{d}/hr", "--out", "{t}/o"],
        "corrupt": ["sr3", "--lr", "{d}/hr_bad", "--hr", "{d}/hr_bad", "--out", "{t}/o", "--device", "cpu"],
        "output": None,  # the pairs are checked before the folder is made; test_train_into_a_file below
    },
    ("lpips-sat", "compare"): {
        "missing": ["{d}/nope.tif", "{d}/hr/town.tif"],
        "corrupt": ["{d}/bad/truncated.tif", "{d}/hr/town.tif"],
        "output": ["{d}/hr/town.tif", "{d}/pred/p/town.tif", "--spatial-out", "{d}/a_file/map.tif"],
    },
    ("lpips-sat", "info"): {
        "missing": ["--weights", "{d}/nope.safetensors"],
        "corrupt": ["--weights", "{d}/bad/garbage.safetensors"],
        "output": None,
    },
    ("lpips-sat", "pretrain"): {
        "missing": ["--data", "{d}/nope", "--out", "{t}/o", "--steps", "1"],
        "corrupt": ["--data", "{d}/bad", "--out", "{t}/o", "--steps", "1"],
        "output": ["--data", "{d}/hr:s2-rgbn", "--out", "{d}/a_file", "--steps", "1"],
    },
    ("lpips-sat", "calibrate"): {
        "missing": ["--backbone", "{d}/nope.safetensors", "--data", "{d}/hr", "--out", "{t}/o"],
        "corrupt": ["--backbone", "{d}/bad/garbage.safetensors", "--data", "{d}/hr", "--out", "{t}/o"],
        "output": ["--backbone", "{d}/bad/garbage.safetensors", "--data", "{d}/hr", "--out", "{d}/a_file"],
    },
}
NOT_APPLICABLE = {
    ("gapeval", "models"): "reads no file and writes none (an unknown model name is a usage error, exit 2)",
    ("lpips-sat", "info"): "writes no file",
}
#: The path each error message must name, per class.
NAMED = {"missing": "nope", "corrupt": "bad", "output": "a_file"}
#: Commands whose "output" case is covered elsewhere (see the comment in CASES).
COVERED_ELSEWHERE = {("gapeval", n) for n in ("score", "gap", "infer", "train", "merge", "study")}


def _argv(template: list[str], data: Path, tmp: Path) -> list[str]:
    return [a.replace("{d}", str(data)).replace("{t}", str(tmp)) for a in template]


def test_every_sub_command_has_its_error_cases() -> None:
    """A new sub-command must get its cases here (and its row in docs/reliability.md)."""
    assert set(sub_commands()) == set(CASES)
    for key, cases in CASES.items():
        assert set(cases) == {"missing", "corrupt", "output"}
        if any(v is None for v in cases.values()):
            assert key in NOT_APPLICABLE or key in COVERED_ELSEWHERE


@pytest.mark.parametrize("key", sorted(CASES), ids=lambda k: f"{k[0]}-{k[1]}")
def test_unknown_option_is_a_usage_error(key: tuple[str, str], capsys: pytest.CaptureFixture) -> None:
    code, _, err = run(key[0], [key[1], "--no-such-option", "1"], capsys)
    assert code == 2 and "error:" in err


@pytest.mark.parametrize("kind", ["missing", "corrupt", "output"])
@pytest.mark.parametrize("key", sorted(CASES), ids=lambda k: f"{k[0]}-{k[1]}")
def test_data_errors_exit_1_with_a_named_file(key: tuple[str, str], kind: str, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    template = CASES[key][kind]
    if template is None:
        pytest.skip(NOT_APPLICABLE.get(key, "covered elsewhere (see CASES)"))
    code, _, err = run(key[0], [key[1], *_argv(template, data, tmp_path)], capsys)
    assert code == 1, err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and lines[0].startswith(f"{key[0]} {key[1]}: error: ") and NAMED[kind] in err, err


# ------------------------------------------------------------------------------------------------ option values


def _numeric_options() -> list[tuple[str, str, str, Callable[[str], object]]]:
    """(program, sub-command, option, type) of every option whose type is a shared number type."""
    found = []
    for (prog, name), parser in sub_commands().items():
        for action in parser._actions:
            if action.option_strings and getattr(action.type, "expects", None):
                found.append((prog, name, action.option_strings[-1], action.type))
    return found


def test_no_option_takes_an_unchecked_number() -> None:
    """Every numeric option of every sub-command uses a checked type (lpips_sat.options.number): none is a bare int/float,
    which would accept nan, inf, 0 or negative values and fail later (or not at all)."""
    bare = [
        (prog, name, a.option_strings)
        for (prog, name), parser in sub_commands().items()
        for a in parser._actions
        if a.type in (int, float)
    ]
    assert bare == []
    assert len(_numeric_options()) >= 60  # the options listed in docs/reliability.md


def _bad_values(parse: Callable[[str], object]) -> list[str]:
    """Values outside ``parse``'s documented range: nan, inf, and just beyond each bound."""
    values = ["nan", "inf", "abc"]
    lo, hi, kind = parse.lo, parse.hi, parse.kind  # type: ignore[attr-defined]
    if lo is not None:
        values.append(str(lo if parse.lo_open else (lo - 1 if kind is int else lo - 1e-3)))  # type: ignore[attr-defined]
    if hi is not None:
        values.append(str(hi if parse.hi_open else (hi + 1 if kind is int else hi + 1e-3)))  # type: ignore[attr-defined]
    if kind is int:
        values.append("1.5")
    return values


@pytest.mark.parametrize("prog,name,option,parse", _numeric_options(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_numeric_option_refuses_bad_values_at_parse_time(prog: str, name: str, option: str, parse, capsys: pytest.CaptureFixture) -> None:
    prefix = {("gapeval", "train"): ["sr3"], ("gapeval", "study"): ["run"]}.get((prog, name), [])
    for value in _bad_values(parse):
        code, err = parse_only(prog, [name, *prefix, f"{option}={value}"], capsys)
        assert code == 2, (option, value)
        assert f"argument {option}" in err and f"got {value!r}" in err, err  # the option's own message, not a later error


@pytest.mark.parametrize(
    "option,value",
    [("--tile", "10"), ("--tile", "36"), ("--workers", "0"), ("--data-range", "0"), ("--pred-scale", "-5"), ("--pred-scale", "nan"),
     ("--target-scale", "inf"), ("--sr-factor", "0.5"), ("--batch-size", "0"), ("--invalid-pred", "ignore")],
)
def test_the_reported_bad_values_of_gapeval_score_exit_2(option: str, value: str, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = ["score", "--pred", str(data / "pred" / "p"), "--target", str(data / "hr"), "--out", str(tmp_path / "o"), "--weights", "random-tiny",
            option, value]
    code, _, err = run("gapeval", argv, capsys)
    assert code == 2 and f"argument {option}: " in err and "error:" in err
    assert not (tmp_path / "o").exists()  # refused before anything was written


@pytest.mark.parametrize(
    "argv",
    [["degrade", "--snr", "abc"], ["degrade", "--snr", "B04=-1"], ["degrade", "--mtf", "2"], ["degrade", "--mtf", "B04=0.3,default=nan"],
     ["infer", "--shard", "5/2"], ["infer", "--shard", "x"], ["pairs", "--split", "nan,0.5,0.5"], ["pairs", "--scale", "inf"],
     ["train", "sr3", "--channel-mult", "1,x"], ["infer", "--batch", "0"]],
    ids=" ".join,
)
def test_other_option_values_are_usage_errors(argv: list[str], capsys: pytest.CaptureFixture) -> None:
    """Options with their own parsers (band lists, shards, fractions) are checked at parse time too."""
    code, err = parse_only("gapeval", argv, capsys)
    option = next(a for a in argv if a.startswith("--"))
    assert code == 2 and f"argument {option}:" in err


def test_good_values_still_parse() -> None:
    assert options.number(int, 32, multiple_of=8)("64") == 64 and options.int_at_least(2)("2") == 2
    assert options.positive_float("1e4") == 1e4 and options.open_fraction("0.25") == 0.25 and options.nonnegative_int("0") == 0
    assert options.ratio_above_one("1.5") == 1.5 and options.fraction("1") == 1.0 and options.finite_float("-3") == -3.0
    with pytest.raises(argparse.ArgumentTypeError, match="expected a finite number > 0 and < 1, got '1'"):
        options.open_fraction("1")


# ------------------------------------------------------------------------------------------------ devices


@pytest.fixture()
def no_accelerators(monkeypatch: pytest.MonkeyPatch) -> None:
    """This machine as one without CUDA or MPS (also on a GPU machine)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


DEVICE_COMMANDS = {
    ("gapeval", "merge"): ["{d}/nope", "--out", "{t}/o"],
    ("gapeval", "score"): ["--pred", "{d}/pred/p", "--target", "{d}/hr", "--out", "{t}/o", "--weights", "random-tiny"],
    ("gapeval", "infer"): ["--model", "sr3", "--input", "{d}/hr", "--out", "{t}/o", "--checkpoint", "{d}/nope"],
    ("gapeval", "gap"): ["--run", "a={d}/nope", "--run", "b={d}/nope", "--out", "{t}/o"],
    ("gapeval", "train"): ["sr3", "--lr", "{d}/hr", "--hr", "{d}/hr", "--out", "{t}/o"],
    ("lpips-sat", "compare"): ["{d}/hr/town.tif", "{d}/pred/p/town.tif"],
}


@pytest.mark.parametrize("device", ["cuda", "cuda:1", "mps", "tpu", "gpu0"])
@pytest.mark.parametrize("key", sorted(DEVICE_COMMANDS), ids=lambda k: f"{k[0]}-{k[1]}")
def test_an_unavailable_device_is_a_usage_error(key, device, no_accelerators, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code, _, err = run(key[0], [key[1], *_argv(DEVICE_COMMANDS[key], data, tmp_path), "--device", device], capsys)
    assert code == 2 and "argument --device:" in err and repr(device) in err
    assert not (tmp_path / "o").exists()


def test_every_device_option_is_checked() -> None:
    with_device = {key for key, parser in sub_commands().items() if any("--device" in a.option_strings for a in parser._actions)}
    assert with_device == set(DEVICE_COMMANDS)
    for key in with_device:
        action = next(a for a in sub_commands()[key]._actions if "--device" in a.option_strings)
        assert getattr(action.type, "__name__", "") == "device", key


# ------------------------------------------------------------------------------------------------ partial, interrupted


def _module_of(key: tuple[str, str]) -> tuple[object, str]:
    """The module and function name that ``main`` calls for a sub-command."""
    prog, name = key
    if prog == "lpips-sat" and name in ("compare", "info"):
        return lcli, f"run_{name}"
    commands = gcli.COMMANDS if prog == "gapeval" else lcli.TRAIN_COMMANDS
    return importlib.import_module(commands[name][0]), "run"


@pytest.mark.parametrize("key", sorted(CASES), ids=lambda k: f"{k[0]}-{k[1]}")
def test_ctrl_c_in_any_command_exits_130(key: tuple[str, str], data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture) -> None:
    def interrupted(args: argparse.Namespace) -> int:
        raise KeyboardInterrupt

    module, name = _module_of(key)
    monkeypatch.setattr(module, name, interrupted)
    template = CASES[key]["missing"] or []
    code, _, err = run(key[0], [key[1], *_argv(template, data, tmp_path)], capsys)
    assert code == 130 and f"{key[0]} {key[1]}: interrupted; finished outputs are kept" in err


def test_missing_extra_exits_1(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "rasterio", None)
    code, _, err = run("gapeval", ["score", "--help"], capsys)
    assert code == 1 and 'pip install "lpips-sat[eval]"' in err


@pytest.fixture(scope="module")
def sr3_checkpoint(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SR3 checkpoint trained for 2 steps on 16 px LR crops of the examples (x4)."""
    root = tmp_path_factory.mktemp("sr3")
    for sub in ("lr", "hr"):
        (root / sub).mkdir()
    hr = read_raster(EXAMPLES / "hr" / "town.tif")
    lr = read_raster(EXAMPLES / "lr" / "town.tif")
    write_raster(root / "hr" / "p0.tif", hr.data, transform=hr.transform, crs=hr.crs, descriptions=hr.descriptions, dtype="uint16")
    write_raster(root / "lr" / "p0.tif", lr.data, transform=lr.transform, crs=lr.crs, descriptions=lr.descriptions, dtype="uint16")
    argv = ["train", "sr3", "--lr", str(root / "lr"), "--hr", str(root / "hr"), "--out", str(root / "ck"), "--steps", "2", "--batch", "2",
            "--patch", "8", "--width", "16", "--channel-mult", "1,2", "--layers-per-block", "1", "--attention-levels", "1",
            "--norm-groups", "8", "--device", "cpu", "--lr-scale", "10000", "--hr-scale", "10000"]
    assert gcli.main(argv) == 0
    return root


def _infer_argv(inputs: Path, out: Path, ckpt: Path) -> list[str]:
    return ["infer", "--model", "sr3", "--input", str(inputs), "--out", str(out), "--checkpoint", str(ckpt / "ck" / "sr3.safetensors"),
            "--steps", "1", "--tile", "16", "--overlap", "0", "--device", "cpu", "--scale", "10000"]


def test_infer_partial_failure_and_interrupt(sr3_checkpoint: Path, data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture) -> None:
    """Exit 3 when some inputs fail and the others are written; 130 on Ctrl-C, finished outputs kept; 1 into a file."""
    lr = read_raster(EXAMPLES / "lr" / "town.tif")
    inputs = tmp_path / "in"
    for i in range(3):
        write_raster(inputs / f"s{i}.tif", lr.data, transform=lr.transform, crs=lr.crs, descriptions=lr.descriptions, dtype="uint16")
    write_raster(inputs / "s9_bad.tif", lr.data[:3], transform=lr.transform, crs=lr.crs, dtype="uint16")  # 3 unnamed bands
    code, _, err = run("gapeval", _infer_argv(inputs, tmp_path / "o", sr3_checkpoint), capsys)
    assert code == 3 and "1 of 4 files failed (the others were written)" in err and "s9_bad.tif" in err
    assert sorted(p.name for p in (tmp_path / "o").glob("*.tif")) == ["s0.tif", "s1.tif", "s2.tif"]

    (inputs / "s9_bad.tif").unlink()
    from gapeval.infer import pipeline

    real, calls = pipeline.Pipeline.process, []

    def interrupted(self, path, key=None):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, path, key)

    monkeypatch.setattr(pipeline.Pipeline, "process", interrupted)
    code, _, err = run("gapeval", [*_infer_argv(inputs, tmp_path / "o2", sr3_checkpoint)], capsys)
    assert code == 130 and "interrupted; finished outputs are kept" in err
    assert sorted(p.name for p in (tmp_path / "o2").glob("*.tif")) == ["s0.tif"]
    assert not list((tmp_path / "o2").rglob("*.tmp"))

    code, _, err = run("gapeval", _infer_argv(inputs, data / "a_file", sr3_checkpoint), capsys)
    assert code == 1 and "a_file" in err


def test_train_into_a_file(sr3_checkpoint: Path, data: Path, capsys: pytest.CaptureFixture) -> None:
    argv = ["train", "sr3", "--lr", str(sr3_checkpoint / "lr"), "--hr", str(sr3_checkpoint / "hr"), "--out", str(data / "a_file"), "--steps", "1",
            "--patch", "8", "--device", "cpu", "--lr-scale", "10000", "--hr-scale", "10000"]
    code, _, err = run("gapeval", argv, capsys)
    assert code == 1 and "a_file: is a file, not a folder" in err


def test_a_corrupt_training_state_is_an_error_line(sr3_checkpoint: Path, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Resuming ``gapeval train`` / ``lpips-sat pretrain --resume`` from a damaged state file: exit 1 naming it."""
    garbage = np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8).tobytes()
    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / "sr3_state.safetensors").write_bytes(garbage)
    argv = ["train", "sr3", "--lr", str(sr3_checkpoint / "lr"), "--hr", str(sr3_checkpoint / "hr"), "--out", str(tmp_path / "ck"), "--steps", "1",
            "--patch", "8", "--width", "16", "--channel-mult", "1,2", "--layers-per-block", "1", "--attention-levels", "1", "--norm-groups", "8",
            "--device", "cpu", "--lr-scale", "10000", "--hr-scale", "10000"]
    code, _, err = run("gapeval", argv, capsys)
    assert code == 1 and "sr3_state.safetensors: not a readable training state" in err
    (tmp_path / "pt").mkdir()
    (tmp_path / "pt" / "checkpoint.safetensors").write_bytes(garbage)
    code, _, err = run("lpips-sat", ["pretrain", "--data", f"{data / 'hr'}:s2-rgbn", "--out", str(tmp_path / "pt"), "--steps", "1",
                                     "--batch", "2", "--crop", "32", "--jitter", "4", "--width-div", "8", "--resume"], capsys)
    assert code == 1 and "checkpoint.safetensors: cannot resume from this training state" in err


def test_degrade_interrupted_keeps_finished_files_and_resumes(data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture) -> None:
    from gapeval import degrade

    real, calls = degrade.degrade_file, []

    def interrupted(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(degrade, "degrade_file", interrupted)
    argv = ["degrade", "--hr", str(data / "hr"), "--out", str(tmp_path / "lr"), "--profile", "bicubic"]
    code, _, err = run("gapeval", argv, capsys)
    assert code == 130 and "interrupted" in err
    assert len(list((tmp_path / "lr").glob("*.tif"))) == 1
    monkeypatch.setattr(degrade, "degrade_file", real)
    code, out, _ = run("gapeval", argv, capsys)
    assert code == 0 and f"{len(SCENES) - 1} written, 1 already done" in out


# ------------------------------------------------------------------------------------------------ real processes


def _subprocess(args: list[str], **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=240, **kw)


def test_a_usage_error_as_a_process(data: Path, tmp_path: Path) -> None:
    """The exit code as the shell sees it (python -m gapeval.cli ...)."""
    argv = ["-m", "gapeval.cli", "score", "--pred", str(data / "pred" / "p"), "--target", str(data / "hr"), "--weights", "random-tiny",
            "--out", str(tmp_path / "o1"), "--tile", "10"]
    bad = _subprocess(argv)
    assert bad.returncode == 2 and "argument --tile: expected an integer >= 32 and a multiple of 8, got '10'" in bad.stderr
    assert "Traceback" not in bad.stderr and not (tmp_path / "o1").exists()


SLOW_SCORE = """
import itertools, sys, time
from gapeval.scoring import scene
real = scene.score_scene
calls = itertools.count()  # thread-safe enough under the GIL
def slow(*args, **kwargs):
    # the first scenes finish quickly; the rest take 2 s each, so the SIGINT sent once two rows exist always finds the
    # run unfinished, however loaded the machine (the test process can be starved of CPU for seconds)
    time.sleep(0.4 if next(calls) < 3 else 2.0)
    return real(*args, **kwargs)
scene.score_scene = slow
from gapeval.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _data_rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["1", "3"])
def test_sigint_exits_130_keeps_finished_pairs_and_resumes(workers: str, data: Path, tmp_path: Path) -> None:
    """A real SIGINT to ``gapeval score`` (each scene slowed to 0.4 s; one thread, or three worker threads): exit 130,
    the finished rows stay in pairs.csv, no temporary file is left, and ``--resume`` scores only the rest (no row lost
    or repeated)."""
    target, pred = tmp_path / "hr", tmp_path / "pred"
    for folder in (target, pred):
        folder.mkdir()
    n = 12
    for i in range(n):
        name = SCENES[i % len(SCENES)]
        shutil.copy(data / "hr" / f"{name}.tif", target / f"s{i:02d}.tif")
        shutil.copy(data / "pred" / "p" / f"{name}.tif", pred / f"s{i:02d}.tif")
    out = tmp_path / "out"
    argv = ["score", "--pred", f"p={pred}", "--target", str(target), "--out", str(out), "--weights", "random-tiny", "--no-progress"]
    proc_argv = [*argv, "--workers", workers]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", SLOW_SCORE, *proc_argv], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while len(_data_rows(out / "pairs.csv")) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "gapeval score: interrupted; finished outputs are kept" in err and "Traceback" not in err
    kept = _data_rows(out / "pairs.csv")
    assert 2 <= len(kept) < n
    assert not list(out.rglob("*.tmp"))
    assert gcli.main([*argv, "--resume"]) == 0
    rows = _data_rows(out / "pairs.csv")
    assert sorted(r["key"] for r in rows) == [f"s{i:02d}" for i in range(n)]
    before = {r["key"]: r["lpips_sat"] for r in kept}
    assert all(math.isclose(float(before[r["key"]]), float(r["lpips_sat"])) for r in rows if r["key"] in before)


def test_exit_codes_have_one_home() -> None:
    """Exit codes are defined once (``lpips_sat.cli.EXIT_*``): no other module assigns an ``EXIT_*`` name, and no
    command returns a bare non-zero number (which could drift from the table) instead of the constant."""
    import ast

    files = sorted((ROOT / "gapeval").rglob("*.py")) + [ROOT / "lpips_sat" / "cli.py"]
    defined, literal = [], []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
            names = [n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name) and n.id.startswith("EXIT_")]
            defined += [f"{path.relative_to(ROOT)}:{node.lineno} {name}" for name in names]
            if isinstance(node, ast.FunctionDef) and (node.name in ("run", "main") or node.name.startswith("run_")):
                literal += [f"{path.relative_to(ROOT)}:{r.lineno} return {r.value.value}" for r in ast.walk(node)
                            if isinstance(r, ast.Return) and isinstance(r.value, ast.Constant) and type(r.value.value) is int
                            and r.value.value != 0]
    assert defined == [f"lpips_sat/cli.py:{n}" for n in _exit_line()], defined
    assert not literal, literal
    from gapeval import score, shards

    assert shards.EXIT_PARTIAL is score.EXIT_PARTIAL is lcli.EXIT_PARTIAL == 3
    assert (lcli.EXIT_OK, lcli.EXIT_DATA, lcli.EXIT_USAGE, lcli.EXIT_PARTIAL, lcli.EXIT_INTERRUPTED) == (0, 1, 2, 3, 130)


def _exit_line() -> list[str]:
    """``LINE NAME`` of each ``EXIT_*`` name that lpips_sat/cli.py assigns (found independently of the AST: by text)."""
    lines = (ROOT / "lpips_sat" / "cli.py").read_text(encoding="utf-8").splitlines()
    out = []
    for i, line in enumerate(lines, start=1):
        if line.startswith("EXIT_") and "=" in line:
            out += [f"{i} {name.strip()}" for name in line.split("=")[0].split(",")]
    return out
