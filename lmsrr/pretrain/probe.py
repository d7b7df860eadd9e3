"""Does pre-training transfer? Frozen-feature accuracy of sources on the seq-digits test split.

For every source (and all sources' features side by side), the pooled feature f_s(x) the trainer
fuses is computed for the fixed seq-digits train / test split, and two read-outs are scored on the
test split:

- nearest class mean: class means of the L2-normalised training features, a test image goes to
  the closest mean (cosine);
- linear probe: multinomial logistic regression on standardised training features.

Each read-out is scored 10-way (argmax over all ten digits) and per task (argmax restricted to the
two digits of the image's task, the 5 tasks of seq-digits, averaged over tasks).

    python -m lmsrr.pretrain.probe --pretrained builtin
    python -m lmsrr.pretrain.probe --pretrained none --seeds 0,1,2
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from lmsrr.config import DEFAULT_SOURCES
from lmsrr.data.augment import to_float
from lmsrr.data.digits import load_digits_tensors
from lmsrr.errors import ConfigError, UserError
from lmsrr.models.source import Source
from lmsrr.models.spec import SourceSpec, parse_sources
from lmsrr.pretrain.builtin import builtin_weight_files

CLASSES_PER_TASK = 2  # seq-digits: 5 tasks of 2 digits in natural order


def weight_list(pretrained: str, specs: list[SourceSpec]) -> list[str]:
    if pretrained == "builtin":
        return builtin_weight_files(specs)
    if pretrained in ("none", "hub"):
        return [pretrained] * len(specs)
    files = [f.strip() for f in pretrained.split(",")]
    if len(files) != len(specs):
        raise ConfigError(f"--pretrained names {len(files)} file(s) for {len(specs)} source(s)")
    return files


@torch.no_grad()
def source_features(spec: SourceSpec, weights: str, x: torch.Tensor, seed: int) -> torch.Tensor:
    """Pooled features f_s of uint8 images, the source in eval mode (seeded for random init)."""
    torch.manual_seed(seed)
    src = Source(spec, 1, weights).eval()
    out = [src.tail(src.run_blocks(src.prefix(to_float(b)))[-1]) for b in x.split(256)]
    return torch.cat(out).float()


def _task_restricted(scores: np.ndarray, y: np.ndarray) -> float:
    """Accuracy with the argmax restricted to the two classes of each sample's task."""
    accs = []
    for t in range(int(y.max()) // CLASSES_PER_TASK + 1):
        lo = t * CLASSES_PER_TASK
        rows = (y >= lo) & (y < lo + CLASSES_PER_TASK)
        pred = scores[rows, lo:lo + CLASSES_PER_TASK].argmax(1) + lo
        accs.append((pred == y[rows]).mean())
    return float(np.mean(accs))


def read_outs(ftr: torch.Tensor, ytr: torch.Tensor, fte: torch.Tensor, yte: torch.Tensor) -> dict:
    y_tr, y_te = ytr.numpy(), yte.numpy()
    ntr, nte = F.normalize(ftr, dim=1), F.normalize(fte, dim=1)
    means = F.normalize(torch.stack([ntr[ytr == c].mean(0) for c in range(10)]), dim=1)
    ncm = (nte @ means.T).numpy()
    scaler = StandardScaler().fit(ftr.numpy())
    clf = LogisticRegression(max_iter=3000).fit(scaler.transform(ftr.numpy()), y_tr)
    lin = clf.decision_function(scaler.transform(fte.numpy()))
    return {
        "ncm_10way": float((ncm.argmax(1) == y_te).mean()), "ncm_per_task": _task_restricted(ncm, y_te),
        "linear_10way": float((lin.argmax(1) == y_te).mean()), "linear_per_task": _task_restricted(lin, y_te),
    }


def probe(sources: str, pretrained: str, seed: int = 0) -> dict[str, dict]:
    """Read-out accuracies per source and for all sources' features concatenated."""
    specs = parse_sources(sources)
    weights = weight_list(pretrained, specs)
    xtr, ytr, xte, yte = load_digits_tensors()
    feats = [(source_features(s, w, xtr, seed + i), source_features(s, w, xte, seed + i))
             for i, (s, w) in enumerate(zip(specs, weights))]
    out = {s.name: read_outs(tr, ytr, te, yte) for s, (tr, te) in zip(specs, feats)}
    if len(specs) > 1:
        # Each source's features are normalised first so neither dominates the concatenation.
        cat = [torch.cat([F.normalize(f[k], dim=1) for f in feats], 1) for k in (0, 1)]
        out["all sources"] = read_outs(cat[0], ytr, cat[1], yte)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lmsrr.pretrain.probe", description=__doc__.split("\n\n")[0])
    p.add_argument("--sources", default=DEFAULT_SOURCES, help="--sources items (default: the default job's)")
    p.add_argument("--pretrained", default="builtin", help="'none', 'builtin' or one weight file per source")
    p.add_argument("--seeds", default="0", help="comma-separated seeds (matter for random initialisation)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0 = torch's default)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
        runs = [probe(args.sources, args.pretrained, s) for s in seeds]
    except ValueError as e:
        if isinstance(e, UserError):
            print(f"probe: error: {e}", file=sys.stderr)
        else:
            print(f"probe: error: --seeds {args.seeds!r}: use integers like 0,1,2", file=sys.stderr)
        return 2
    except UserError as e:
        print(f"probe: error: {e}", file=sys.stderr)
        return 2
    keys = ("ncm_10way", "ncm_per_task", "linear_10way", "linear_per_task")
    table = {src: {k: [r[src][k] for r in runs] for k in keys} for src in runs[0]}
    if args.json:
        print(json.dumps({"pretrained": args.pretrained, "seeds": seeds, "results": table}, indent=2))
        return 0
    print(f"--pretrained {args.pretrained}, seeds {seeds} (mean ± std in %)")
    print("| source | NCM 10-way | NCM per task | linear 10-way | linear per task |")
    print("|---|---:|---:|---:|---:|")
    for src, row in table.items():
        cells = [f"{100 * np.mean(v):.1f} ± {100 * np.std(v, ddof=1):.1f}" if len(v) > 1 else f"{100 * v[0]:.1f}"
                 for v in row.values()]
        print(f"| {src} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
