"""BatchNorm sources through the whole run: under torchrun (the weight hashes of both ranks are
compared after every task) and in lmsrr-compare (each method's final weights are hashed)."""
import json
import os
import socket
import subprocess
import sys

from lmsrr.compare import main as compare_main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SOURCES = ("resnet18(input_size=32,layers=1/1/1/1),"
           "vit_tiny_patch16_224(input_size=16,patch_size=4,embed_dim=32,depth=2,num_heads=2)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_batch_norm_source_under_torchrun(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           os.path.join(ROOT, "scripts", "train.py"), "--pretrained", "none", "--sources", SOURCES, "--trainable-blocks", "2,1",
           "--epochs", "1", "--stop-after", "2", "--batch-size", "32", "--threads", "1",
           "--out-dir", str(tmp_path), "--run-name", "ddp", "--no-progress"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(x) for x in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    hashes = [r["ddp/weight_hashes"] for r in lines if "ddp/weight_hashes" in r]
    assert len(hashes) == 2 and all(len(h) == 2 and h[0] == h[1] for h in hashes)
    res = json.loads((tmp_path / "ddp" / "results.json").read_text())
    assert res["world_size"] == 2 and res["complete"] and len(res["weights_sha256"]) == 64


def test_batch_norm_source_in_compare(tmp_path):
    out = tmp_path / "cmp"
    code = compare_main(["--methods", "finetune,er", "--pretrained", "none", "--sources", SOURCES, "--trainable-blocks", "2", "--epochs", "1",
                         "--stop-after", "1", "--batch-size", "128", "--threads", "1",
                         "--out", str(out), "--no-progress"])
    assert code == 0
    for m in ("finetune", "er"):
        res = json.loads((out / m / "results.json").read_text())
        assert res["complete"] and len(res["weights_sha256"]) == 64
    assert (out / "comparison.md").exists()
