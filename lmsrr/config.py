"""One tree of dataclasses for a run, validated on construction.

The CLI (:mod:`lmsrr.cli`) builds its flags from these fields: every field's ``help`` metadata is
its flag's help text, and ``flag`` (when present) its name; otherwise the flag is ``--field-name``.
Presets reproduce the released code's recipes; explicit flags override them.
"""
from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from typing import Any

from lmsrr.errors import ConfigError

# Two small, heterogeneous, randomly initialised timm sources sized for 8x8 digits (upsampled):
# a 4-block ViT on 16x16 inputs and a 4-stage ConvNeXt on 32x32 inputs.
DEFAULT_SOURCES = (
    "vit_tiny_patch16_224(input_size=16,patch_size=4,embed_dim=64,depth=4,num_heads=4),"
    "convnext_atto(input_size=32,dims=16/32/64/128,depths=1/1/2/1)"
)
# The two ViT-B/16 models of the released code, under their timm names.
PAPER_SOURCES = "vit_base_patch16_224.orig_in21k_ft_in1k,vit_base_patch16_224.orig_in21k"


def _f(default: Any, help: str, flag: str | None = None, choices: tuple | None = None, **kw):
    meta = {"help": help}
    if flag:
        meta["flag"] = flag
    if choices:
        meta["choices"] = choices
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def _check_choice(name: str, value: str, choices: tuple) -> None:
    if value not in choices:
        close = difflib.get_close_matches(value, choices, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{name}={value!r} is not valid{hint}; choose one of: {', '.join(choices)}")


@dataclass
class DataConfig:
    stream: str = _f("seq-digits", "continual stream to train on (see the README for the list)")
    data_root: str = _f("data", "folder holding the datasets in their standard layouts")
    download: bool = _f(False, "download missing datasets with torchvision's downloaders")
    class_order: str = _f(
        "natural", "'natural' (task 1 = classes 0..c-1, ...) or 'seed:N' for a seeded permutation"
    )
    batch_size: int = _f(32, "stream batch size per step")
    eval_batch_size: int = _f(256, "batch size for evaluation")
    loader: str = _f(
        "auto", "input pipeline: 'dali' (NVIDIA DALI; GPU decode and augmentation when training on "
        "CUDA), 'torch', or 'auto' (DALI when installed)", choices=("auto", "dali", "torch"),
    )
    loader_workers: int = _f(0, "DALI threads / torch loader decoding threads (0 = one per CPU core)")
    image_size: int = _f(
        0, "resolution of file datasets' images (ImageNet-R, CUB-200, Cars-196; 0 = 224); in-memory "
        "datasets keep their native size",
    )
    augment: bool = _f(True, "training augmentation of stream and replayed samples")
    split_seed: int = _f(0, "seed of the fixed dataset splits: ImageNet-R's 80/20 split, rot-mnist's angles")
    verify_images: bool = _f(
        True, "decode every image file once when the stream is built, to report and skip corrupt "
        "files before training (--no-verify-images reads headers only)",
    )

    def __post_init__(self):
        _check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        _check(self.eval_batch_size >= 1, f"eval_batch_size must be >= 1, got {self.eval_batch_size}")
        _check_choice("loader", self.loader, ("auto", "dali", "torch"))
        _check(self.loader_workers >= 0, f"loader_workers must be >= 0, got {self.loader_workers}")
        _check(self.image_size == 0 or self.image_size >= 8,
               f"image_size must be 0 (the default, 224) or >= 8, got {self.image_size}")
        order = self.class_order
        ok = order == "natural" or (order.startswith("seed:") and order[5:].lstrip("-").isdigit())
        _check(ok, f"class_order={order!r}: use 'natural' or 'seed:N' (N an integer)")


@dataclass
class ModelConfig:
    sources: str = _f(
        DEFAULT_SOURCES,
        "comma-separated timm model names, each optionally with timm keyword arguments in "
        "parentheses, e.g. 'vit_small_patch16_224(drop_path_rate=0.1)'; tuple values as a/b/c; "
        "the key input_size=N sets the source's input resolution",
    )
    pretrained: str = _f(
        "none",
        "'none' (random init), 'hub' (timm weights from the local hub cache; never downloads), or "
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
        _check_choice("msidf", self.msidf, ("attention", "reference"))
        self.trainable_blocks = str(self.trainable_blocks)  # configs saved with an int stay valid
        _ = self.trainable_blocks_per_source  # parsed here so a bad value fails before any work
        _check(self.fusion_dim >= 0, f"fusion_dim must be >= 0, got {self.fusion_dim}")
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
        from lmsrr.models.spec import parse_sources

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
    name: str = _f("lmsrr", "continual-learning method", flag="--method")
    alpha: float = _f(0.3, "weight of the ARO-weighted multi-level distillation term")
    beta: float = _f(0.5, "weight of the logit-replay (DER) term")
    buffer_size: int = _f(500, "replay buffer slots (0 disables replay)")
    replay_batch_size: int = _f(32, "replay samples drawn per step")
    tau: float = _f(0.1, "Gumbel-softmax temperature of the ARO switch vector")
    hard_switch: bool = _f(False, "use straight-through hard Gumbel samples for the switch vector")
    # Baselines (lmsrr/methods/): each method has its own weights, so one configuration runs every
    # method of a comparison with its own defaults (alpha / beta above are LMSRR's only).
    der_alpha: float = _f(0.5, "der: weight of the logit-replay MSE (the DER paper's alpha)")
    derpp_alpha: float = _f(0.5, "derpp: weight of the logit-replay MSE (the DER++ paper's alpha)")
    derpp_beta: float = _f(0.5, "derpp: weight of the label-replay cross-entropy (the DER++ paper's beta)")
    lwf_alpha: float = _f(1.0, "lwf: weight of the distillation from the previous model's outputs")
    lwf_temperature: float = _f(2.0, "lwf: softmax temperature of the distillation")
    ewc_lambda: float = _f(10.0, "ewc: weight of the penalty (lambda/2) * sum F (theta - theta*)^2; "
                          "plain SGD diverges once lr * lambda * max F exceeds 2")
    ewc_gamma: float = _f(1.0, "ewc: online EWC decay of the accumulated Fisher at each task end (1 = none)")
    si_c: float = _f(5.0, "si: weight c of the penalty c * sum Omega (theta - theta*)^2; plain SGD "
                    "diverges once 2 * lr * c * max Omega exceeds 2")
    si_xi: float = _f(1.0, "si: damping xi of the importance Omega = w / ((delta theta)^2 + xi)")

    def __post_init__(self):
        _check(self.alpha >= 0, f"alpha must be >= 0, got {self.alpha}")
        _check(self.beta >= 0, f"beta must be >= 0, got {self.beta}")
        _check(self.buffer_size >= 0, f"buffer_size must be >= 0, got {self.buffer_size}")
        _check(self.replay_batch_size >= 1, f"replay_batch_size must be >= 1, got {self.replay_batch_size}")
        _check(self.tau > 0, f"tau must be > 0, got {self.tau}")
        for name in ("der_alpha", "derpp_alpha", "derpp_beta", "lwf_alpha", "ewc_lambda", "si_c"):
            _check(getattr(self, name) >= 0, f"{name} must be >= 0, got {getattr(self, name)}")
        _check(self.lwf_temperature > 0, f"lwf_temperature must be > 0, got {self.lwf_temperature}")
        _check(0 <= self.ewc_gamma <= 1, f"ewc_gamma must be in [0, 1], got {self.ewc_gamma}")
        _check(self.si_xi > 0, f"si_xi must be > 0, got {self.si_xi}")


@dataclass
class OptimConfig:
    optimizer: str = _f("sgd", "optimizer, re-created at the start of every task", choices=("sgd", "adamw"))
    lr: float = _f(0.03, "learning rate")
    momentum: float = _f(0.0, "SGD momentum")
    weight_decay: float = _f(0.0, "weight decay")
    epochs: int = _f(15, "epochs per task")

    def __post_init__(self):
        _check_choice("optimizer", self.optimizer, ("sgd", "adamw"))
        _check(self.lr > 0, f"lr must be > 0, got {self.lr}")
        _check(0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum}")
        _check(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
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
        d = self.device
        _check(d in ("auto", "cpu", "cuda") or (d.startswith("cuda:") and d[5:].isdigit()),
               f"device={d!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N'")
        _check(self.threads >= 0, f"threads must be >= 0, got {self.threads}")
        _check_choice("precision", self.precision, ("auto", "bf16", "fp16", "fp32"))
        _check_choice("dist_backend", self.dist_backend, ("auto", "nccl", "gloo"))
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
        _check(self.log_every >= 1, f"log_every must be >= 1, got {self.log_every}")
        _check_choice("metrics", self.metrics, ("auto", "class-il", "class-il,task-il"))


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        groups = {}
        for f in dataclasses.fields(cls):
            sub = d.get(f.name, {})
            group_cls = f.default_factory
            names = {g.name for g in dataclasses.fields(group_cls)}
            unknown = set(sub) - names
            if unknown:
                raise ConfigError(f"unknown {f.name} option(s): {', '.join(sorted(unknown))}")
            groups[f.name] = group_cls(**sub)
        return cls(**groups)

    def replace(self, **overrides: dict) -> "Config":
        """Return a copy with ``group={field: value}`` overrides applied and validated."""
        d = self.to_dict()
        for group, values in overrides.items():
            d[group].update(values)
        return Config.from_dict(d)


# Recipes of the released code (command/lmsrr_*.sh): SGD lr 0.03, batch 32, replay batch 32,
# buffer 500, beta 0.2; alpha 0.1 on CIFAR-10 and 0.3 on CIFAR-100; one epoch.
# The defaults are the default job (seq-digits, tiny random sources): more epochs and a larger
# replay weight than the paper's recipes, which start from pre-trained weights.
PRESETS: dict[str, dict[str, dict]] = {
    "cifar10": {
        "data": {"stream": "seq-cifar10", "batch_size": 32},
        "model": {"sources": PAPER_SOURCES, "pretrained": "hub", "msidf": "reference"},
        "method": {"alpha": 0.1, "beta": 0.2, "buffer_size": 500, "replay_batch_size": 32},
        "optim": {"optimizer": "sgd", "lr": 0.03, "epochs": 1},
    },
    "cifar100": {
        "data": {"stream": "seq-cifar100", "batch_size": 32},
        "model": {"sources": PAPER_SOURCES, "pretrained": "hub", "msidf": "reference"},
        "method": {"alpha": 0.3, "beta": 0.2, "buffer_size": 500, "replay_batch_size": 32},
        "optim": {"optimizer": "sgd", "lr": 0.03, "epochs": 1},
    },
}
