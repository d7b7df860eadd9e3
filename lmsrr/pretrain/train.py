"""``lmsrr-pretrain``: supervised pre-training of sources on generated fractal categories.

Every ``--sources`` item is built exactly as the trainer builds it (same timm keyword arguments,
input size, mean / std, resizing), given a K-way classifier, trained to tell the K fractal
categories apart, and written without that classifier in timm's conventions:

    <out>/<name>-fractal<K>.safetensors   the backbone's state dict (what --pretrained FILE loads)
    <out>/<name>-fractal<K>.json          input size, mean / std, generator and training
                                          settings, the command, SHA-256 and size of the file
    <out>/manifest.json                   every file of the command (read by --pretrained builtin)

Runs are deterministic on one machine for a given command (seeded generator, initialisation and
batch order), resumable at epoch boundaries (``--resume auto``), CPU or GPU (autocast as the
trainer's ``--precision``), and under ``torchrun`` every rank trains on its share of each global
batch with DDP (only rank 0 writes files).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import platform
import shlex
import shutil
import sys
import time
from dataclasses import dataclass

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file
from tqdm.auto import tqdm

from lmsrr import checkpoint, distributed
from lmsrr.config import DEFAULT_SOURCES
from lmsrr.data.augment import Augment, to_float
from lmsrr.errors import ConfigError, UserError
from lmsrr.fields import check, flag_of, option, validate, value_type
from lmsrr.models.source import Source
from lmsrr.models.spec import SourceSpec, parse_sources
from lmsrr.precision import resolve_precision
from lmsrr.pretrain.builtin import MANIFEST, sha256_file, spec_key
from lmsrr.pretrain.fractal import Categories, FractalSettings, cached, generate

log = logging.getLogger("lmsrr.pretrain")

# The generator's settings become flags of their own (--categories, ...), with these helps.
GENERATOR_HELP = {
    "categories": "fractal categories K (one iterated function system each) = classes to learn",
    "images_per_category": "images generated per category",
    "image_size": "side of the generated images in pixels (each source resizes to its input size)",
    "maps_min": "fewest affine maps of a category's system",
    "maps_max": "most affine maps of a category's system",
    "walkers": "chaos-game walkers per image",
    "steps": "chaos-game steps per walker",
    "burn_in": "chaos-game steps before positions are drawn",
    "jitter": "relative perturbation of a category's maps in each instance",
    "supersample": "render at this multiple of the image size, then average down (antialiasing)",
    "seed": "seed of the categories, images, initial weights and batch order",
}


@dataclass
class TrainSettings:
    sources: str = option(DEFAULT_SOURCES, "comma-separated --sources items (the trainer's syntax) "
                          "to pre-train, one after the other on the same images")
    out: str = option("pretrained", "folder for the weight files, their JSON and manifest.json")
    work_dir: str = option("runs/pretrain", "folder for checkpoints (one sub-folder per source)")
    epochs: int = option(40, "passes over the image set")
    batch_size: int = option(128, "images per step (per rank under torchrun)")
    lr: float = option(1e-3, "AdamW peak learning rate (linear warm-up, then cosine decay to 0)")
    weight_decay: float = option(0.05, "AdamW weight decay")
    warmup_epochs: float = option(2.0, "epochs of linear learning-rate warm-up")
    label_smoothing: float = option(0.1, "label smoothing of the cross-entropy")
    augment: bool = option(True, "random shift (zero padding of 1/8 of the side) and horizontal flip")
    regenerate_every: int = option(
        0, "draw a fresh set of instances every N epochs (0 = one set for the whole run, cached with "
        "--cache-dir)")
    cache_dir: str = option("", "keep the generated set here and reuse it on the next run ('' = off)")
    workers: int = option(0, "threads generating image chunks (0 = one per torch thread)")
    device: str = option("auto", "'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:N'")
    precision: str = option("auto", "'auto' (bf16 autocast on GPU, fp32 on CPU), 'bf16', 'fp16' or "
                            "'fp32'", choices=("auto", "bf16", "fp16", "fp32"))
    threads: int = option(0, "CPU threads for torch (0 = torch's default)")
    dist_backend: str = option("auto", "torch.distributed backend under torchrun",
                               choices=("auto", "nccl", "gloo"))
    resume: str = option("none", "'none' (start over), 'auto' (continue each source from its newest "
                         "checkpoint under --work-dir, if any)", choices=("none", "auto"))
    keep_checkpoints: int = option(2, "checkpoints kept per source")
    progress: bool = option(True, "show progress bars")

    def __post_init__(self):
        validate(self)
        check(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}")
        check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        check(self.lr > 0, f"lr must be > 0, got {self.lr}")
        check(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        check(0 <= self.warmup_epochs <= self.epochs,
              f"warmup_epochs must be in [0, epochs={self.epochs}], got {self.warmup_epochs}")
        check(0 <= self.label_smoothing < 1, f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        check(self.regenerate_every >= 0, f"regenerate_every must be >= 0, got {self.regenerate_every}")
        check(self.workers >= 0, f"workers must be >= 0, got {self.workers}")
        check(self.threads >= 0, f"threads must be >= 0, got {self.threads}")
        check(self.keep_checkpoints >= 1, f"keep_checkpoints must be >= 1, got {self.keep_checkpoints}")
        d = self.device
        check(d in ("auto", "cpu", "cuda") or (d.startswith("cuda:") and d[5:].isdigit()),
              f"device={d!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N'")
        check(bool(self.out.strip()), "out must name a folder")


# --------------------------------------------------------------------------- the model

@dataclass
class Prepared:
    """A source as the trainer will see it, with a K-way classifier for pre-training."""

    spec: SourceSpec
    model: nn.Module
    input_size: tuple[int, int]
    interpolation: str
    mean: torch.Tensor
    std: torch.Tensor
    classifier: tuple[str, ...]  # state-dict prefixes of the classifier (left out of the file)


def prepare(spec: SourceSpec, n_classes: int, seed: int) -> Prepared:
    # Seeded right before creation, so a source's initial weights do not depend on which other
    # sources the command lists.
    torch.manual_seed(seed)
    try:
        # Built, split and checked exactly as the trainer builds it (a model the trainer cannot
        # split or run at its input size is refused here); its input size, resizing and mean /
        # std are the trainer's by construction.
        src = Source(spec, 1, "none")
    except RuntimeError as e:
        raise ConfigError(f"source {spec.name} does not run on its input size ({e}); change its "
                          f"input_size") from e
    if src.in_chans != 3:
        raise ConfigError(f"source {spec.name}: pre-training needs a 3-channel model (in_chans=3)")
    model = src.model.train()
    model.requires_grad_(True)  # the whole backbone learns, not only the trainer's top blocks
    model.reset_classifier(n_classes)
    classifier = model.pretrained_cfg.get("classifier") or "head"
    classifier = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    return Prepared(spec, model, tuple(src.input_size), src.interpolation,
                    src.mean.detach().clone(), src.std.detach().clone(), classifier)


def model_input(p: Prepared, x: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1] -> the source's input: resized and normalised as ``Source`` does."""
    if tuple(x.shape[-2:]) != p.input_size:
        x = F.interpolate(x, size=p.input_size, mode=p.interpolation, align_corners=False,
                          antialias=x.shape[-1] > p.input_size[-1])
    return (x - p.mean.to(x.device)) / p.std.to(x.device)


def backbone_state(p: Prepared) -> dict[str, torch.Tensor]:
    """The state dict without the pre-training classifier, contiguous, on the CPU."""
    keep = {}
    for k, v in p.model.state_dict().items():
        if any(k == c or k.startswith(c + ".") for c in p.classifier):
            continue
        keep[k] = v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).contiguous()
    return keep


# --------------------------------------------------------------------------- training

def lr_at(step: int, total: int, warmup: int, peak: float) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


class Images:
    """The image set of each epoch: one cached set, or a fresh set every ``regenerate_every``."""

    def __init__(self, gen: FractalSettings, ts: TrainSettings, progress: bool):
        self.gen, self.ts, self.progress = gen, ts, progress
        self.categories = Categories.sample(gen)
        self.workers = ts.workers or torch.get_num_threads()
        self._epoch_set, self._data = None, None

    def for_epoch(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        which = epoch // self.ts.regenerate_every if self.ts.regenerate_every else 0
        if which != self._epoch_set:
            if which == 0 and self.ts.cache_dir:
                self._data = cached(self.gen, self.ts.cache_dir, self.workers, self.progress)
            else:
                self._data = generate(self.gen, which, self.workers, self.progress, self.categories)
            self._epoch_set = which
        return self._data


def _epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


def train_source(p: Prepared, images: Images, ts: TrainSettings, gen: FractalSettings,
                 device: torch.device, ckpt_root: str) -> dict:
    """Train one source; returns its training record (final loss / accuracy, time, throughput)."""
    model = p.model.to(device)
    precision = resolve_precision(ts.precision, device)
    scaler = precision.scaler(device)
    opt = torch.optim.AdamW(model.parameters(), lr=ts.lr, weight_decay=ts.weight_decay)
    world, rank = distributed.world_size(), distributed.rank()
    global_batch = ts.batch_size * world
    steps_per_epoch = gen.n_images // global_batch
    if steps_per_epoch < 1:
        raise ConfigError(f"{gen.n_images} images make no full global batch of {global_batch} "
                          f"(batch_size {ts.batch_size} x {world} rank(s)); lower --batch-size")
    total, warmup = steps_per_epoch * ts.epochs, round(ts.warmup_epochs * steps_per_epoch)
    augment = Augment(pad=max(1, gen.image_size // 8), flip=True) if ts.augment else Augment()
    aug_gen = torch.Generator().manual_seed(gen.seed * 7 + 1 + rank)

    start_epoch, history, seconds = 0, [], 0.0
    # What decides this source's weights (not which other sources the command lists), so a
    # source can be resumed by a command that lists it alone or with others.
    training = {k: v for k, v in _training_dict(ts).items() if k != "sources"}
    fingerprint = {"source": spec_key(p.spec), "generator": gen.to_dict(), "training": training,
                   "world_size": world}
    if ts.resume == "none" and distributed.is_main():
        shutil.rmtree(ckpt_root, ignore_errors=True)  # a fresh start never resumes stale epochs later
    distributed.barrier()
    if ts.resume == "auto":
        found = checkpoint.load_latest(ckpt_root, rank, world)
        if found is not None:
            state, folder = found
            if state["fingerprint"] != fingerprint:
                raise UserError(f"{folder} was written by a run with other settings; resume with the "
                                f"original flags, or start over with --resume none")
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            if scaler is not None and state.get("scaler"):
                scaler.load_state_dict(state["scaler"])
            aug_gen.set_state(state["aug_gen"])
            torch.set_rng_state(state["torch_rng"])
            start_epoch, history, seconds = state["epoch"], state["history"], state["seconds"]
            log.info("%s: resumed from %s (epoch %d of %d)", p.spec.name, folder, start_epoch, ts.epochs)
    train_model = model
    if world > 1:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    bar = tqdm(total=total, initial=start_epoch * steps_per_epoch, desc=f"pretrain {p.spec.name}",
               disable=not (ts.progress and distributed.is_main()))
    model.train()
    for epoch in range(start_epoch, ts.epochs):
        t0 = time.perf_counter()
        x_all, y_all = images.for_epoch(epoch)
        order = _epoch_order(gen.seed, epoch, gen.n_images)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        for i in range(steps_per_epoch):
            step = epoch * steps_per_epoch + i
            for group in opt.param_groups:
                group["lr"] = lr_at(step, total, warmup, ts.lr)
            idx = order[i * global_batch + rank * ts.batch_size:][: ts.batch_size]
            x, y = x_all[idx], y_all[idx].to(device)
            if augment.enabled:
                x = augment.apply(x, *augment.sample(len(idx), aug_gen))
            x = model_input(p, to_float(x.to(device)))
            with precision.autocast(device):
                logits = train_model(x)
                loss = F.cross_entropy(logits.float(), y, label_smoothing=ts.label_smoothing)
            opt.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                opt.step()
            # Accumulated on the device: no host sync per step.
            loss_sum += loss.detach()
            correct += (logits.argmax(1) == y).sum()
            bar.update(1)
        # One host sync per epoch, for the log, the bar and the checkpoint's history.
        stats = distributed.all_reduce_sum_(torch.stack([loss_sum.float(), correct.float()]))
        seconds += time.perf_counter() - t0
        record = {"epoch": epoch + 1, "loss": round(float(stats[0]) / (steps_per_epoch * world), 5),
                  "train_acc": round(float(stats[1]) / (steps_per_epoch * global_batch), 5)}
        history.append(record)
        bar.set_postfix(loss=record["loss"], acc=record["train_acc"])
        if not ts.progress and distributed.is_main():
            log.info("%s epoch %d/%d: loss %.4f, train accuracy %.3f", p.spec.name, epoch + 1,
                     ts.epochs, record["loss"], record["train_acc"])
        _save_checkpoint(ckpt_root, epoch + 1, model, opt, scaler, aug_gen, history, seconds, ts,
                         fingerprint)
    bar.close()
    return {"history": history, "seconds": round(seconds, 1),
            "images_per_s": round(ts.epochs * steps_per_epoch * global_batch / max(seconds, 1e-9), 1),
            "device": _device_name(device), "world_size": world, "precision": precision.name}


def _save_checkpoint(root, epoch, model, opt, scaler, aug_gen, history, seconds, ts, fingerprint) -> None:
    state = {"epoch": epoch, "fingerprint": fingerprint, "model": model.state_dict(), "optimizer": opt.state_dict(),
             "scaler": scaler.state_dict() if scaler is not None else None,
             "aug_gen": aug_gen.get_state(), "torch_rng": torch.get_rng_state(),
             "history": history, "seconds": seconds}
    folder = checkpoint.save_rank_state(root, epoch, distributed.rank(), state)
    distributed.barrier()
    if distributed.is_main():
        checkpoint.mark_complete(folder, distributed.world_size())
        checkpoint.prune(root, ts.keep_checkpoints)
    distributed.barrier()


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


# --------------------------------------------------------------------------- files

def file_stem(spec: SourceSpec, gen: FractalSettings) -> str:
    return f"{spec.name}-fractal{gen.categories}"


def write_weights(p: Prepared, gen: FractalSettings, ts: TrainSettings, record: dict, command: str) -> dict:
    """The safetensors file and its JSON; returns the manifest entry."""
    os.makedirs(ts.out, exist_ok=True)
    stem = file_stem(p.spec, gen)
    path = os.path.join(ts.out, stem + ".safetensors")
    tmp = f"{path}.tmp-{os.getpid()}"
    save_file(backbone_state(p), tmp, metadata={"format": "pt"})
    os.replace(tmp, path)
    os.chmod(path, 0o644)  # safetensors writes owner-only; shipped files must be readable by all
    entry = {
        "file": os.path.basename(path), "source": _spec_text(p.spec), "key": spec_key(p.spec),
        "sha256": sha256_file(path), "bytes": os.path.getsize(path),
        "input_size": [3, *p.input_size], "interpolation": p.interpolation,
        "mean": [round(v, 6) for v in p.mean.flatten().tolist()],
        "std": [round(v, 6) for v in p.std.flatten().tolist()],
        "final_loss": record["history"][-1]["loss"], "final_train_acc": record["history"][-1]["train_acc"],
        "seconds": record["seconds"], "images_per_s": record["images_per_s"], "device": record["device"],
        "world_size": record["world_size"], "precision": record["precision"],
    }
    sidecar = dict(entry, generator=gen.to_dict(), training=_training_dict(ts), command=command,
                   history=record["history"], torch=torch.__version__, timm=timm.__version__)
    with open(os.path.join(ts.out, stem + ".json"), "w", encoding="utf-8") as f:
        json.dump(sidecar, f, indent=2)
        f.write("\n")
    return entry


def _training_dict(ts: TrainSettings) -> dict:
    # Where files go and how the run is shown do not change the weights: left out of the record.
    skip = {"out", "work_dir", "cache_dir", "resume", "progress", "keep_checkpoints", "workers"}
    return {k: v for k, v in dataclasses.asdict(ts).items() if k not in skip}


def _spec_text(spec: SourceSpec) -> str:
    args = [f"{k}={'/'.join(map(str, v)) if isinstance(v, tuple) else v}" for k, v in spec.kwargs.items()]
    if spec.input_size is not None:
        args.insert(0, f"input_size={spec.input_size}")
    return f"{spec.name}({','.join(args)})" if args else spec.name


def write_manifest(entries: list[dict], gen: FractalSettings, ts: TrainSettings, command: str) -> str:
    manifest = {"format": 1, "command": command, "generator": gen.to_dict(),
                "training": _training_dict(ts), "torch": torch.__version__, "timm": timm.__version__,
                "files": entries}
    path = os.path.join(ts.out, MANIFEST)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
    return path


# --------------------------------------------------------------------------- command line

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lmsrr-pretrain",
        description="Pre-train sources (any timm model the trainer can split) by supervised "
        "classification of procedurally generated fractal categories, and write weights that "
        "--pretrained FILE loads (safetensors + JSON + manifest.json). No download, seeded.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    generator = p.add_argument_group("generator options")
    for f in dataclasses.fields(FractalSettings):
        _add_flag(generator, f, GENERATOR_HELP[f.name], f"gen.{f.name}")
    training = p.add_argument_group("training options")
    for f in dataclasses.fields(TrainSettings):
        _add_flag(training, f, f.metadata["help"], f"train.{f.name}", f.metadata.get("choices"))
    return p


def _add_flag(group, f: dataclasses.Field, help_text: str, dest: str, choices=None) -> None:
    default = f.default
    kw = dict(dest=dest, default=argparse.SUPPRESS)
    if isinstance(default, bool):
        group.add_argument(flag_of(f), action=argparse.BooleanOptionalAction,
                           help=f"{help_text} (default: {'on' if default else 'off'})", **kw)
        return
    if choices:
        help_text += f"; one of: {', '.join(choices)}"
    group.add_argument(flag_of(f), type=value_type(f), metavar=f.name.upper(),
                       help=f"{help_text} (default: {default})", **kw)


def settings_from_args(args: argparse.Namespace) -> tuple[FractalSettings, TrainSettings]:
    gen = {k[4:]: v for k, v in vars(args).items() if k.startswith("gen.")}
    train = {k[6:]: v for k, v in vars(args).items() if k.startswith("train.")}
    return FractalSettings(**gen), TrainSettings(**train)


def run(gen: FractalSettings, ts: TrainSettings, command: str) -> list[dict]:
    specs = parse_sources(ts.sources)
    stems = [file_stem(s, gen) for s in specs]
    if len(set(stems)) != len(stems):
        raise ConfigError("two --sources items share a timm name; pre-train them with separate --out folders")
    if ts.threads:
        torch.set_num_threads(ts.threads)
    device = distributed.init(ts.device, ts.dist_backend)
    try:
        # Every source is built (and refused if unusable) before any image is generated.
        prepared = [prepare(s, gen.categories, gen.seed) for s in specs]
        if distributed.is_main():
            _check_writable(ts.out)
        images = Images(gen, ts, ts.progress and distributed.is_main())
        entries = []
        for p, stem in zip(prepared, stems):
            record = train_source(p, images, ts, gen, device, os.path.join(ts.work_dir, stem, "checkpoints"))
            if distributed.is_main():
                entries.append(write_weights(p, gen, ts, record, command))
                log.info("%s: %s (%d bytes, sha256 %s)", p.spec.name, entries[-1]["file"],
                         entries[-1]["bytes"], entries[-1]["sha256"])
        if distributed.is_main():
            log.info("manifest: %s", write_manifest(entries, gen, ts, command))
        return entries
    finally:
        distributed.cleanup()


def _check_writable(folder: str) -> None:
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the output folder {folder!r}: {e.strerror}") from e
    if not os.access(folder, os.W_OK):
        raise UserError(f"the output folder {folder!r} is not writable")


def _command(argv: list[str]) -> str:
    """The command as recorded in the manifest: without ``--resume``, which does not change the
    weights (a resumed run ends with the same bytes as an uninterrupted one)."""
    kept, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--resume":
            skip = True
        elif not a.startswith("--resume="):
            kept.append(a)
    return shlex.join(["lmsrr-pretrain", *kept])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        gen, ts = settings_from_args(args)
        run(gen, ts, _command(argv))
    except UserError as e:
        print(f"lmsrr-pretrain: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
