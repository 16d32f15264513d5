"""An app's requirements in install stages, and the one list that carries them.

fal's `requirements = [["torch==2.5.1"], ["flash-attn", "--no-build-isolation"]]` installs
each stage with its own `pip install` after the stage before it, into the same environment,
so a package whose build needs an earlier stage (flash-attn's setup imports torch) builds.
The deploy header (`AppSettings.requirements`) and the stored revision (`AppConfig`) carry the
stages as one list of strings in which an empty string ends a stage:
`("torch==2.5.1", "", "flash-attn", "--no-build-isolation")`. A list without an empty string
is one stage, as every list was before stages existed, so older clients, older revisions and
their cached environments keep their meaning.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["STAGE_BREAK", "join_stages", "sorted_stage", "split_stages"]

# The entry that ends a stage in the one-list form (no pip specifier is empty).
STAGE_BREAK = ""

Stages = tuple[tuple[str, ...], ...]

# pip install's options whose value may come as the next entry (`"--extra-index-url", URL`):
# such a pair is one unit when a stage is sorted, so sorting never parts them.
OPTIONS_WITH_VALUE = frozenset({
    "-i", "--index-url", "--extra-index-url", "-f", "--find-links", "-c", "--constraint",
    "-r", "--requirement", "-e", "--editable", "--trusted-host", "--no-binary",
    "--only-binary", "-C", "--config-settings", "--global-option", "--platform",
    "--python-version", "--implementation", "--abi", "--progress-bar",
})


def join_stages(stages: Iterable[Iterable[str]]) -> tuple[str, ...]:
    """The one-list form of `stages`, in order; blank specifiers and empty stages are
    dropped, so every list of stages has exactly one form."""
    kept = [stage for stage in (_specifiers(stage) for stage in stages) if stage]
    joined: list[str] = []
    for number, stage in enumerate(kept):
        if number:
            joined.append(STAGE_BREAK)
        joined.extend(stage)
    return tuple(joined)


def split_stages(requirements: Iterable[str]) -> Stages:
    """The stages of a one-list form, in order (a blank entry ends a stage; empty stages
    are dropped): `()` for no requirements, one stage for a list without a break."""
    stages: list[tuple[str, ...]] = []
    current: list[str] = []
    for entry in requirements:
        if entry.strip():
            current.append(entry.strip())
        elif current:
            stages.append(tuple(current))
            current = []
    if current:
        stages.append(tuple(current))
    return tuple(stages)


def sorted_stage(stage: Iterable[str], *, unique: bool = False) -> tuple[str, ...]:
    """One stage's entries sorted (and with `unique`, repeats dropped) for a stable cache
    key, keeping each option that takes a value together with the entry after it (pip reads
    `--extra-index-url URL torch` and `torch --extra-index-url URL` alike, but not
    `--extra-index-url torch URL`)."""
    units: list[tuple[str, ...]] = []
    entries = list(_specifiers(stage))
    index = 0
    while index < len(entries):
        width = 2 if entries[index] in OPTIONS_WITH_VALUE and index + 1 < len(entries) else 1
        units.append(tuple(entries[index:index + width]))
        index += width
    return tuple(entry for unit in sorted(set(units) if unique else units) for entry in unit)


def _specifiers(stage: Iterable[str]) -> tuple[str, ...]:
    return tuple(spec.strip() for spec in stage if spec.strip())
