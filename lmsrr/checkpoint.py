"""Atomic, verified checkpoints: nothing a crash, a pre-emption or a bad disk write can cost.

Layout inside the run directory::

    checkpoints/step-00001234/rank0.pt        one file per rank (replay buffers and RNG differ)
    checkpoints/step-00001234/rank0.pt.sha256
    checkpoints/step-00001234/COMPLETE        written last, by rank 0, once every rank is done

Each file is written to a temporary name, fsync'd and renamed, so a checkpoint is either whole or
absent; its SHA-256 is checked on load, so a truncated or corrupted one is detected and the
previous one used instead (with a warning). A failed write (a full disk) raises
:class:`lmsrr.errors.WriteError` and leaves no temporary file; the previous checkpoint is
untouched. Deleting a checkpoint removes its ``COMPLETE`` marker first, so an interrupted deletion
never leaves a folder that claims to be whole.
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
import random
import re
import shutil
import subprocess

import numpy as np
import torch

from lmsrr import __version__
from lmsrr.errors import UserError
from lmsrr.storage import atomic_write_bytes, remove_quietly, remove_stale_temporaries, write_error

log = logging.getLogger("lmsrr.checkpoint")

_STEP_DIR = re.compile(r"^step-(\d+)$")


def step_folder(ckpt_root: str, step: int) -> str:
    return os.path.join(ckpt_root, f"step-{step:08d}")


def save_rank_state(ckpt_root: str, step: int, rank: int, state: dict) -> str:
    folder = step_folder(ckpt_root, step)
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    path = os.path.join(folder, f"rank{rank}.pt")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise write_error(f"the checkpoint of step {step}", folder, len(data), e) from e
    atomic_write_bytes(path, data, f"the checkpoint of step {step}")
    atomic_write_bytes(path + ".sha256", hashlib.sha256(data).hexdigest().encode(),
                       f"the checksum of the checkpoint of step {step}")
    return folder


def mark_complete(folder: str, world_size: int) -> None:
    atomic_write_bytes(os.path.join(folder, "COMPLETE"), str(world_size).encode(),
                       "the checkpoint's COMPLETE marker")


def remove_checkpoint(folder: str) -> None:
    """Delete one checkpoint folder, its COMPLETE marker first: a kill in the middle leaves an
    incomplete folder (ignored and cleaned up later), never a data-less "complete" one."""
    remove_quietly(os.path.join(folder, "COMPLETE"))
    shutil.rmtree(folder, ignore_errors=True)


def prune(ckpt_root: str, keep: int) -> None:
    """Remove all but the newest ``keep`` complete checkpoints (and any older partial ones)."""
    complete = complete_steps(ckpt_root)
    if len(complete) <= keep:
        return
    cutoff = complete[-keep]
    for step, folder in _step_dirs(ckpt_root):
        if step < cutoff:
            remove_checkpoint(folder)


def discard_after(ckpt_root: str, step: int) -> list[str]:
    """Remove every checkpoint newer than ``step``: after resuming from ``step``, they belong to a
    history the resumed run abandoned (a rolled-back divergence, or the unusable ones a fallback
    skipped) and must not be mistaken for its own."""
    gone = [folder for s, folder in _step_dirs(ckpt_root) if s > step]
    for folder in gone:
        remove_checkpoint(folder)
    return gone


def clean_stale(ckpt_root: str) -> None:
    """Remove what a killed writer left: temporary files, and folders without a COMPLETE marker
    (a checkpoint interrupted while being written). Only while no rank is writing."""
    remove_stale_temporaries(ckpt_root)
    for _, folder in _step_dirs(ckpt_root):
        if not os.path.exists(os.path.join(folder, "COMPLETE")):
            shutil.rmtree(folder, ignore_errors=True)


def complete_steps(ckpt_root: str) -> list[int]:
    """Steps of the checkpoints with a COMPLETE marker, oldest first (not verified)."""
    return [s for s, f in _step_dirs(ckpt_root) if os.path.exists(os.path.join(f, "COMPLETE"))]


def _step_dirs(ckpt_root: str) -> list[tuple[int, str]]:
    if not os.path.isdir(ckpt_root):
        return []
    out = []
    for name in os.listdir(ckpt_root):
        m = _STEP_DIR.match(name)
        if m:
            out.append((int(m.group(1)), os.path.join(ckpt_root, name)))
    return sorted(out)


def _verified_load(path: str):
    with open(path, "rb") as f:
        data = f.read()
    with open(path + ".sha256") as f:
        expected = f.read().strip()
    if hashlib.sha256(data).hexdigest() != expected:
        raise ValueError("checksum mismatch (truncated or corrupted file)")
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)


def _load_folder(folder: str, rank: int, world_size: int) -> dict:
    """This rank's state from one checkpoint folder, after verifying every rank's file; raises
    ValueError (or OSError) saying why the folder is unusable."""
    marker = os.path.join(folder, "COMPLETE")
    if not os.path.exists(marker):
        raise ValueError("incomplete (no COMPLETE marker)")
    with open(marker) as f:
        saved_world = int(f.read().strip() or 0)
    if saved_world != world_size:
        raise ValueError(f"written by {saved_world} process(es), this run has {world_size}")
    # Every rank verifies every file, so all ranks agree on which checkpoint is valid.
    states = [_verified_load(os.path.join(folder, f"rank{r}.pt")) for r in range(world_size)]
    return states[rank]


def load_latest(ckpt_root: str, rank: int, world_size: int) -> tuple[dict, str] | None:
    """The newest checkpoint whose files all verify, as (this rank's state, folder); None if none.

    Invalid checkpoints (incomplete, truncated, corrupted, other world size) are skipped with a
    warning naming the problem.
    """
    for step, folder in reversed(_step_dirs(ckpt_root)):
        try:
            return _load_folder(folder, rank, world_size), folder
        except Exception as e:  # any unreadable checkpoint falls back to the previous one
            log.warning("checkpoint %s is unusable (%s); trying the previous one", folder, e)
    return None


def load_named(folder: str, rank: int, world_size: int) -> tuple[dict, str]:
    """Exactly the checkpoint in ``folder`` (``<run>/checkpoints/step-N``), no fallback: the user
    asked for this one. An unusable folder is a :class:`UserError` saying why."""
    try:
        return _load_folder(folder, rank, world_size), folder
    except Exception as e:
        raise UserError(f"--resume {folder}: this checkpoint is unusable ({e}); name another "
                        f"step-N folder, or give the run directory to take its newest valid one") from e


def is_checkpoint_folder(path: str) -> bool:
    """True for a path of the form ``.../checkpoints/step-N`` (a named checkpoint)."""
    path = os.path.abspath(path)
    return bool(_STEP_DIR.match(os.path.basename(path))) and \
        os.path.basename(os.path.dirname(path)) == "checkpoints"


def capture_rng(extra_generators: dict[str, torch.Generator]) -> dict:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "generators": {k: g.get_state() for k, g in extra_generators.items()},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict, extra_generators: dict[str, torch.Generator]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    for k, g in extra_generators.items():
        g.set_state(state["generators"][k])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def code_revision() -> str:
    """Git revision of the checkout the code runs from, or the package version."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=5)
        if out.returncode == 0:
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return f"lmsrr {__version__}"


def newest_complete(ckpt_root: str) -> str | None:
    """The newest checkpoint folder with a COMPLETE marker (for reading rank 0's state)."""
    for _, folder in reversed(_step_dirs(ckpt_root)):
        if os.path.exists(os.path.join(folder, "COMPLETE")):
            return folder
    return None


def read_rank0(folder: str) -> dict:
    """Rank 0's verified state from one checkpoint folder (evaluation and export read only it:
    the network is the same on every rank). Raises :class:`UserError` when it does not verify."""
    path = os.path.join(folder, "rank0.pt")
    try:
        return _verified_load(path)
    except (OSError, ValueError, RuntimeError, EOFError) as e:
        raise UserError(f"checkpoint {folder} is unusable ({e})") from None
