"""One tree of dataclasses for a run, validated on construction.

The CLI (:mod:`lmsrr.cli`) builds its flags from these fields: every field's ``help`` metadata is
its flag's help text, and ``flag`` (when present) its name; otherwise the flag is ``--field-name``.
Every group validates itself on construction (types and choices through
:func:`lmsrr.fields.validate`, ranges in its ``__post_init__``). Each method's own options come
from the method (its ``Options`` dataclass, see :mod:`lmsrr.methods.registry`); in config files
they sit flat in the ``method`` group (``der_alpha``), as their flags do. Presets reproduce the
released code's recipes; explicit flags override them.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field

# Importing the packages registers every built-in method (and its options) and stream before the
# tree below collects them; the registries themselves know nothing of this module.
import lmsrr.methods  # noqa: F401
from lmsrr.data import available_streams
from lmsrr.data.loaders import LOADERS
from lmsrr.errors import ConfigError
from lmsrr.fields import check as _check
from lmsrr.fields import option as _f
from lmsrr.fields import validate
from lmsrr.inputs import PIPELINES, RELEASED_STATS
from lmsrr.methods.registry import available_methods, default_options, method_class, method_option_fields
from lmsrr.models.spec import parse_sources
from lmsrr.optim import UPDATE_BACKENDS

# Two small, heterogeneous, randomly initialised timm sources sized for 8x8 digits (upsampled):
# a 4-block ViT on 16x16 inputs and a 4-stage ConvNeXt on 32x32 inputs.
DEFAULT_SOURCES = (
    "vit_tiny_patch16_224(input_size=16,patch_size=4,embed_dim=64,depth=4,num_heads=4),"
    "convnext_atto(input_size=32,dims=16/32/64/128,depths=1/1/2/1)"
)
# The two ViT-B/16 models of the released code, under their timm names.
PAPER_SOURCES = "vit_base_patch16_224.orig_in21k_ft_in1k,vit_base_patch16_224.orig_in21k"


@dataclass
class DataConfig:
    stream: str = _f("seq-digits", f"continual stream to train on; one of: {', '.join(available_streams())}")
    data_root: str = _f("data", "folder holding the datasets in their standard layouts")
    download: bool = _f(False, "download missing datasets with torchvision's downloaders")
    class_order: str = _f(
        "natural", "'natural' (task 1 = classes 0..c-1, ...) or 'seed:N' for a seeded permutation"
    )
    batch_size: int = _f(32, "stream batch size per step")
    eval_batch_size: int = _f(256, "batch size for evaluation")
    loader: str = _f(
        "auto", "input pipeline: 'dali' (NVIDIA DALI; GPU decode and augmentation when training on "
        "CUDA), 'torch', or 'auto' (DALI when installed)", choices=LOADERS,
    )
    loader_workers: int = _f(0, "DALI threads / torch loader decoding threads (0 = one per CPU core)")
    image_size: int = _f(
        0, "resolution of file datasets' images (ImageNet-R, CUB-200, Cars-196; 0 = 224); in-memory "
        "datasets keep their native size",
    )
    augment: bool = _f(True, "training augmentation of stream and replayed samples")
    pipeline: str = _f(
        "native", "input transforms: 'native' (each source resizes and normalises with its own timm data "
        "config; file datasets at --image-size) or 'released' (the released code's per-dataset "
        "views and statistics, then a bicubic resize to 224, as its ViTs see them; presets use it)",
        choices=PIPELINES,
    )
    split_seed: int = _f(0, "seed of the fixed dataset splits: ImageNet-R's 80/20 split, rot-mnist's angles")
    verify_images: bool = _f(
        True, "decode every image file once when the stream is built, to report and skip corrupt "
        "files before training (--no-verify-images reads headers only)",
    )
    tasks: int = _f(0, "number of tasks of a folder:PATH stream (its classes, sorted by folder name, are "
                    "dealt out in --class-order); other streams have a fixed split")
    classes_per_task: str = _f(
        "", "classes of each task of a folder:PATH stream: one number for equal tasks, or one per task "
        "for uneven ones, e.g. '4,2,2' (a larger first task); empty = the classes split evenly over --tasks",
    )

    def __post_init__(self):
        validate(self)
        _check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        _check(self.eval_batch_size >= 1, f"eval_batch_size must be >= 1, got {self.eval_batch_size}")
        _check(self.loader_workers >= 0, f"loader_workers must be >= 0, got {self.loader_workers}")
        _check(self.loader_workers <= 1024, f"loader_workers must be <= 1024, got {self.loader_workers}")
        _check(self.image_size == 0 or self.image_size >= 8,
               f"image_size must be 0 (the default, 224) or >= 8, got {self.image_size}")
        order = self.class_order
        if self.pipeline == "released":
            _check(self.stream in RELEASED_STATS,
                   f"--pipeline released reproduces the released code's streams "
                   f"({', '.join(RELEASED_STATS)}); {self.stream!r} is not one of them")
            _check(self.image_size in (0, 224),
                   f"--pipeline released fixes the file datasets' views (224); drop --image-size {self.image_size}")
        seed = re.fullmatch(r"seed:(-?[0-9]{1,18})", order)
        _check(order == "natural" or seed is not None,
               f"class_order={order[:80]!r}: use 'natural' or 'seed:N' (N an integer)")
        _check(self.split_seed >= 0, f"split_seed must be >= 0, got {self.split_seed}")
        _check(self.image_size <= 4096, f"image_size must be <= 4096, got {self.image_size}")
        _check(self.tasks >= 0, f"tasks must be >= 1 (or 0: not set), got {self.tasks}")
        try:
            counts = self.class_counts
        except ValueError:
            counts = ()
        _check(all(c >= 1 for c in counts) and (counts or not self.classes_per_task.strip()),
               f"classes_per_task={self.classes_per_task!r}: use one positive integer or one per task, e.g. '4,2,2'")
        if self.stream.partition(":")[1]:  # a stream read from a folder: the user sets its tasks
            _check(bool(self.stream.partition(":")[2].strip()),
                   f"stream={self.stream!r}: name the dataset folder after the colon, e.g. folder:/data/my-images")
            _check(self.tasks >= 1 or len(counts) >= 1,
                   f"stream {self.stream!r} needs --tasks N (and optionally --classes-per-task)")
            _check(len(counts) <= 1 or self.tasks in (0, len(counts)),
                   f"--classes-per-task {self.classes_per_task} lists {len(counts)} tasks but --tasks is {self.tasks}")
        else:
            _check(self.tasks == 0 and not counts,
                   f"--tasks and --classes-per-task apply only to folder:PATH streams, not to {self.stream!r}")

    @property
    def class_counts(self) -> tuple[int, ...]:
        """classes_per_task as integers (empty when not given); ValueError when malformed."""
        return tuple(int(c) for c in self.classes_per_task.split(",")) if self.classes_per_task.strip() else ()


@dataclass
class ModelConfig:
    sources: str = _f(
        DEFAULT_SOURCES,
        "comma-separated timm model names, each optionally with timm keyword arguments in "
        "parentheses, e.g. 'vit_small_patch16_224(drop_path_rate=0.1)'; tuple values as a/b/c; "
        "the key input_size=N sets the source's input resolution",
    )
    pretrained: str = _f(
        "builtin",
        "'builtin' (the default: the weights shipped with lmsrr for the default --sources, "
        "pre-trained on generated fractals by lmsrr-pretrain; other sources need one of the "
        "alternatives), 'none' (random init), 'hub' (timm weights from the local hub cache; never "
        "downloads), or "
        "comma-separated local weights, one per source: a timm/PyTorch/safetensors file, or a Hugging "
        "Face transformers ViT folder (config.json + model.safetensors or pytorch_model.bin)",
    )
    trainable_blocks: str = _f(
        "3", "top units of each source that are trained (blocks of a ViT, stages of a CNN; see the "
        "README's source families): one number for every source, or one per source such as '3,2'",
    )
    msidf: str = _f(
        "attention",
        "fusion variant: 'reference' (the released code: multi-scale Conv1d branches mixed by a "
        "softmax) or 'attention' (adds input-conditioned attention over sources first)",
        choices=("attention", "reference"),
    )
    fusion_kernels: str = _f("3,5", "odd Conv1d kernel sizes of the multi-scale branches")
    fusion_dim: int = _f(0, "common feature width D for fusion (0 = widest source)")

    def __post_init__(self):
        if isinstance(self.trainable_blocks, int) and not isinstance(self.trainable_blocks, bool):
            self.trainable_blocks = str(self.trainable_blocks)  # configs saved with an int stay valid
        validate(self)
        _ = self.trainable_blocks_per_source  # parsed here so a bad value fails before any work
        _check(0 <= self.fusion_dim <= 65536, f"fusion_dim must be in [0, 65536], got {self.fusion_dim}")
        _check(bool(self.sources.strip()), "sources must name at least one timm model")
        try:
            ks = self.kernel_sizes
        except ValueError:
            raise ConfigError(f"fusion_kernels={self.fusion_kernels!r}: use odd integers like '3,5'")
        _check(len(ks) >= 1 and all(k >= 1 and k % 2 == 1 for k in ks),
               f"fusion_kernels={self.fusion_kernels!r}: every kernel size must be a positive odd integer")

    @property
    def trainable_blocks_per_source(self) -> tuple[int, ...]:
        """``trainable_blocks`` for each source in ``sources`` order (one number applies to all)."""
        text = self.trainable_blocks.replace(" ", "")
        parts = text.split(",")
        _check(all(p.isdigit() for p in parts),
               f"trainable_blocks={self.trainable_blocks!r}: use one integer, or one per source like '3,2'")
        ks = tuple(int(p) for p in parts)
        _check(all(k >= 1 for k in ks), f"trainable_blocks={self.trainable_blocks!r}: every count must be >= 1")
        n = len(parse_sources(self.sources))
        if len(ks) == 1:
            return ks * n
        _check(len(ks) == n, f"trainable_blocks={self.trainable_blocks!r} gives {len(ks)} counts for "
                             f"{n} source(s); give one number, or one per source")
        return ks

    @property
    def kernel_sizes(self) -> tuple[int, ...]:
        return tuple(int(k) for k in self.fusion_kernels.split(",") if k.strip())


@dataclass
class MethodConfig:
    name: str = _f("lmsrr", f"continual-learning method; one of: {', '.join(available_methods())}",
                   flag="--method")
    # Shared by every method that replays (LMSRR and the replay baselines).
    buffer_size: int = _f(500, "replay buffer slots (0 disables replay)")
    replay_batch_size: int = _f(32, "replay samples drawn per step")
    # Every registered method's own options (one configuration runs every method of a comparison,
    # each with its own defaults); shown flat on the command line and in config files.
    options: dict = field(default_factory=default_options)

    def __post_init__(self):
        validate(self)
        method_class(self.name)  # an unknown name is an error that suggests the closest one
        _check(self.buffer_size >= 0, f"buffer_size must be >= 0, got {self.buffer_size}")
        _check(self.replay_batch_size >= 1, f"replay_batch_size must be >= 1, got {self.replay_batch_size}")

    @property
    def own(self):
        """The options of the selected method (None when it has none)."""
        return self.options.get(self.name)

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "options"}
        for key, (method, f) in method_option_fields().items():
            d[key] = getattr(self.options[method], f.name)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "MethodConfig":
        flat = method_option_fields()
        common = {f.name for f in dataclasses.fields(cls)} - {"options"}
        unknown = set(d) - common - set(flat)
        if unknown:
            raise ConfigError(f"unknown method option(s): {', '.join(map(repr, sorted(unknown)))}")
        per_method: dict[str, dict] = {}
        for key, value in d.items():
            if key in flat:
                method, f = flat[key]
                per_method.setdefault(method, {})[f.name] = value
        options = default_options()
        for method, values in per_method.items():
            options[method] = type(options[method])(**values)
        return cls(options=options, **{k: v for k, v in d.items() if k in common})


@dataclass
class OptimConfig:
    optimizer: str = _f("sgd", "optimizer, re-created at the start of every task", choices=("sgd", "adamw"))
    lr: float = _f(0.03, "learning rate")
    momentum: float = _f(0.0, "SGD momentum")
    weight_decay: float = _f(0.0, "weight decay")
    epochs: int = _f(15, "epochs per task")
    update_backend: str = _f(
        "auto", "how the optimizer step runs: 'torch' (torch.optim; the PyTorch masked update when "
        "a method gates updates per step, e.g. --aro-gate updates), 'fused' (torch.optim with "
        "fused=True), 'triton' (the masked Triton update: one launch for all trainable parameters), "
        "'apex' (NVIDIA apex's FusedSGD / FusedAdam, when installed with its CUDA extensions), or "
        "'auto' (triton on CUDA, torch elsewhere)", choices=UPDATE_BACKENDS)

    def __post_init__(self):
        validate(self)
        _check(self.lr > 0, f"lr must be > 0, got {self.lr}")
        _check(0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum}")
        _check(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        # Every step multiplies the weights by (1 - lr * weight_decay): at 1 or more they flip sign.
        _check(self.lr * self.weight_decay < 1,
               f"lr * weight_decay must be < 1 (each step scales the weights by 1 - lr * "
               f"weight_decay), got lr={self.lr}, weight_decay={self.weight_decay}")
        _check(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}")


@dataclass
class RuntimeConfig:
    device: str = _f("auto", "'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:N'")
    seed: int = _f(0, "random seed for weights, shuffling, augmentation and replay")
    deterministic: bool = _f(False, "use deterministic algorithms (slower)")
    threads: int = _f(0, "CPU threads for torch (0 = torch's default)")
    precision: str = _f(
        "auto", "'auto' (bf16 autocast on GPU, fp32 on CPU), 'bf16', 'fp16' (with a gradient "
        "scaler) or 'fp32'", choices=("auto", "bf16", "fp16", "fp32"))
    compile: bool = _f(False, "torch.compile the trainable blocks, fusion and head")
    compile_backend: str = _f("inductor", "torch.compile backend (e.g. inductor, aot_eager, eager)")
    eval_cache_mb: int = _f(
        1024, "memory budget (MiB) for caching the frozen prefixes' outputs on the test sets, so "
        "later evaluations run only the trainable top (0 disables)")
    dist_backend: str = _f("auto", "torch.distributed backend under torchrun: 'auto' (nccl on "
                           "GPU, gloo on CPU), 'nccl' or 'gloo'", choices=("auto", "nccl", "gloo"))
    stop_after: int = _f(0, "train and evaluate only the first N tasks (0 = all)")
    resume: str = _f(
        "none", "'none', 'auto' (newest valid checkpoint in the run directory named by --out-dir "
        "and --run-name; a fresh start if there is none), or a checkpoint folder or run directory")
    checkpoint_every: int = _f(
        0, "also checkpoint every N training steps (0 = only at the end of every task)")
    keep_checkpoints: int = _f(2, "complete checkpoints kept in the run directory")
    max_nonfinite_steps: int = _f(
        20, "consecutive non-finite fp16 steps (skipped by the scaler) tolerated before stopping")

    def __post_init__(self):
        validate(self)
        d = self.device
        _check(d in ("auto", "cpu", "cuda") or (d.startswith("cuda:") and d[5:].isdigit()),
               f"device={d!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N'")
        _check(self.threads >= 0, f"threads must be >= 0, got {self.threads}")
        _check(self.threads <= 1024, f"threads must be <= 1024, got {self.threads}")
        # NumPy's generator takes seeds in [0, 2**32); the same range everywhere.
        _check(self.seed >= 0, f"seed must be >= 0, got {self.seed}")
        _check(self.eval_cache_mb >= 0, f"eval_cache_mb must be >= 0, got {self.eval_cache_mb}")
        _check(self.stop_after >= 0, f"stop_after must be >= 0, got {self.stop_after}")
        _check(self.checkpoint_every >= 0, f"checkpoint_every must be >= 0, got {self.checkpoint_every}")
        _check(self.keep_checkpoints >= 1, f"keep_checkpoints must be >= 1, got {self.keep_checkpoints}")
        _check(self.max_nonfinite_steps >= 1,
               f"max_nonfinite_steps must be >= 1, got {self.max_nonfinite_steps}")
        _check(bool(self.resume.strip()), "resume must be 'none', 'auto' or a path")


@dataclass
class LogConfig:
    out_dir: str = _f("runs", "parent folder of run directories")
    run_name: str = _f("", "run directory name (default: <stream>-<method>-<timestamp>)")
    log_every: int = _f(20, "steps between logged training metrics")
    progress: bool = _f(True, "show progress bars (--no-progress to hide)")
    metrics: str = _f(
        "auto", "accuracies reported: 'auto' (class-IL and task-IL; class-IL only on domain-IL "
        "streams), 'class-il', or 'class-il,task-il'", choices=("auto", "class-il", "class-il,task-il"))

    def __post_init__(self):
        validate(self)
        _check(self.log_every >= 1, f"log_every must be >= 1, got {self.log_every}")
        _check(bool(self.out_dir.strip()), "out_dir must name a folder")
        # The run directory is <out_dir>/<run_name>: one folder, never out_dir itself or its parent.
        name = self.run_name
        _check(name == "" or ("/" not in name and name.strip() not in (".", "..") and name.strip() == name),
               f"run_name={name[:80]!r}: use one folder name (no '/', not '.' or '..', no "
               f"leading or trailing spaces)")


@dataclass
class ProfileConfig:
    enabled: bool = _f(False, "record a torch.profiler trace of a window of training steps "
                       "(see --profile-task, --profile-wait, --profile-warmup, --profile-active)",
                       flag="--profile")
    task: int = _f(2, "profiler: task (1-based) whose first steps are profiled; 2 has replay and "
                   "distillation on", flag="--profile-task")
    wait: int = _f(1, "profiler: steps of that task skipped before the window", flag="--profile-wait")
    warmup: int = _f(2, "profiler: steps recorded but discarded (allocator, autotuning)",
                     flag="--profile-warmup")
    active: int = _f(5, "profiler: steps recorded and kept", flag="--profile-active")
    trace: str = _f("", "profiler: Chrome trace path (default: <run dir>/profile/trace.json)",
                    flag="--profile-trace")
    top: int = _f(15, "profiler: operators listed in the summary", flag="--profile-top")

    def __post_init__(self):
        validate(self)
        _check(self.task >= 1, f"profile task must be >= 1 (1-based), got {self.task}")
        _check(self.wait >= 0 and self.warmup >= 0, "profile wait and warmup must be >= 0")
        _check(self.active >= 1, f"profile active must be >= 1, got {self.active}")
        _check(self.top >= 1, f"profile top must be >= 1, got {self.top}")


# config.json's record of choices resolved at start-up on the machine that ran (e.g. what
# --update-backend auto became); not an option group: --config skips it and resolves again.
RESOLVED = "resolved"


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    log: LogConfig = field(default_factory=LogConfig)
    profile: ProfileConfig = field(default_factory=ProfileConfig)

    def to_dict(self) -> dict:
        return {f.name: _group_dict(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        groups = {}
        for f in dataclasses.fields(cls):
            sub = d.get(f.name, {})
            group_cls = f.default_factory
            if not isinstance(sub, dict):
                raise ConfigError(f"option group {f.name!r} must be a mapping of options, got "
                                  f"{type(sub).__name__}")
            if hasattr(group_cls, "from_dict"):
                groups[f.name] = group_cls.from_dict(sub)
                continue
            names = {g.name for g in dataclasses.fields(group_cls)}
            unknown = set(sub) - names
            if unknown:
                raise ConfigError(f"unknown {f.name} option(s): {', '.join(map(repr, sorted(unknown)))}")
            groups[f.name] = group_cls(**sub)
        return cls(**groups)

    def replace(self, **overrides: dict) -> "Config":
        """Return a copy with ``group={field: value}`` overrides applied and validated."""
        d = self.to_dict()
        for group, values in overrides.items():
            d[group].update(values)
        return Config.from_dict(d)


def _group_dict(group) -> dict:
    if hasattr(group, "to_dict"):
        return group.to_dict()
    return dataclasses.asdict(group)


# Recipes of the released code (command/lmsrr_*.sh): SGD lr 0.03, batch 32, replay batch 32,
# buffer 500, beta 0.2 everywhere; alpha and epochs per dataset. The defaults are the default job
# (seq-digits, tiny random sources): more epochs and a larger replay weight than the paper's
# recipes, which start from pre-trained weights.
RELEASED_RECIPES = {  # preset: (stream, alpha, epochs)
    "cifar10": ("seq-cifar10", 0.1, 1),
    "cifar100": ("seq-cifar100", 0.3, 1),
    "tinyimg": ("seq-tinyimg", 0.1, 10),
    "imagenet-r": ("seq-imagenet-r", 0.3, 10),
    "cub200": ("seq-cub200", 0.3, 20),
    "cars196": ("seq-cars196", 0.3, 20),
    "rot-mnist": ("rot-mnist", 0.1, 1),
}


def _released_preset(stream: str, alpha: float, epochs: int) -> dict[str, dict]:
    return {
        "data": {"stream": stream, "batch_size": 32, "pipeline": "released"},
        "model": {"sources": PAPER_SOURCES, "pretrained": "hub", "msidf": "reference"},
        "method": {"name": "lmsrr", "alpha": alpha, "beta": 0.2, "buffer_size": 500,
                   "replay_batch_size": 32},
        "optim": {"optimizer": "sgd", "lr": 0.03, "epochs": epochs},
    }


PRESETS: dict[str, dict[str, dict]] = {name: _released_preset(*recipe)
                                       for name, recipe in RELEASED_RECIPES.items()}
