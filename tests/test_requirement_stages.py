"""Requirement install stages (fal's list of lists): their one-list form, the keys of the
environments built from them, and the Dockerfile's one RUN step per stage."""

from __future__ import annotations

import hashlib
import json
import sys

import pytest

from falrt.backends import environments
from falrt.images import build
from falrt.requirement_stages import join_stages, split_stages

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("stages", "joined"), [
    ([], ()),
    ([["six"]], ("six",)),
    ([["torch==2.5.1"], ["flash-attn", "--no-build-isolation"]],
     ("torch==2.5.1", "", "flash-attn", "--no-build-isolation")),
    ([[], [" a "], [""], ["b", " "], []], ("a", "", "b")),
])
def test_stages_join_into_one_list_and_split_back(
    stages: list[list[str]], joined: tuple[str, ...],
) -> None:
    assert join_stages(stages) == joined
    assert split_stages(joined) == tuple(tuple(s.strip() for s in stage if s.strip())
                                         for stage in stages if any(s.strip() for s in stage))


def test_a_list_without_a_break_is_one_stage() -> None:
    assert split_stages(["six", "idna"]) == (("six", "idna"),)
    assert split_stages(["", "six", "", "", "idna", " "]) == (("six",), ("idna",))


def test_a_single_stage_keeps_the_environment_key_it_had_before_stages() -> None:
    before = hashlib.sha256(json.dumps(
        [sys.version_info[:2], ["idna", "six"]]).encode()).hexdigest()[:20]
    assert environments.environment_key(["six", "idna"]) == before
    assert environments.environment_key(["idna", "", "six"]) != before
    assert environments.environment_key(["idna", "", "six"]) != environments.environment_key(
        ["six", "", "idna"])
    assert environments.environment_key(["", " "]) == ""
    # the index an option names is part of the key, not sorted away from its option
    assert environments.environment_key(["--extra-index-url", "https://a", "torch"]) != (
        environments.environment_key(["--extra-index-url", "torch", "https://a"]))


def test_docker_requirements_normalize_per_stage_and_a_single_stage_as_before() -> None:
    assert build.normalize_requirements([" six", "idna", "six"]) == ["idna", "six"]
    assert build.normalize_requirements(["torch", "", "b", "a", "b"]) == ["torch", "", "a", "b"]
    # an option and its value stay together, whatever sorts between them
    assert build.normalize_requirements(
        ["torch", "--extra-index-url", "https://download.pytorch.org/whl/cpu", "aiohttp",
         "--extra-index-url", "https://b.example/simple"]) == [
        "--extra-index-url", "https://b.example/simple",
        "--extra-index-url", "https://download.pytorch.org/whl/cpu", "aiohttp", "torch"]
    with pytest.raises(build.ImageError, match="one line"):
        build.normalize_requirements(["six\nidna"])
    assert build.environment_key("base", ["idna", "", "six"], {}) != build.environment_key(
        "base", ["idna", "six"], {})


def test_the_dockerfile_installs_each_stage_in_its_own_run_step_in_order() -> None:
    single = build.dockerfile("base", ["idna", "six"]).splitlines()
    runs = [line for line in single if line.startswith("RUN pip install")]
    assert runs == ["RUN pip install --no-input --no-cache-dir --progress-bar off idna six"]

    staged = build.dockerfile("base", ["torch", "", "flash-attn", "--no-build-isolation"])
    steps = [line for line in staged.splitlines() if "installing stage" in line]
    assert steps == [
        "RUN echo 'installing stage 1/2: torch' && pip install --no-input --no-cache-dir "
        "--progress-bar off torch",
        "RUN echo 'installing stage 2/2: flash-attn --no-build-isolation' && pip install "
        "--no-input --no-cache-dir --progress-bar off flash-attn --no-build-isolation",
    ]
    assert staged.splitlines()[-2:] == steps  # the top layers, after falrt's own
