import pytest

# A scaled-down pre-training command: 4 categories x 8 images at 16 px, a 2-block ViT, 2 epochs.
# Seconds on one CPU thread; the built-in weights' command at full size takes minutes.
TINY_SOURCE = "vit_tiny_patch16_224(input_size=16,patch_size=4,embed_dim=32,depth=2,num_heads=2)"
TINY = ["--categories", "4", "--images-per-category", "8", "--image-size", "16", "--walkers", "16",
        "--steps", "8", "--burn-in", "2", "--epochs", "2", "--batch-size", "8", "--warmup-epochs", "1",
        "--sources", TINY_SOURCE, "--threads", "1", "--no-progress"]


@pytest.fixture
def pretrain(tmp_path, capsys):
    """pretrain(name, *extra flags) -> (exit status, stderr, output folder) of lmsrr-pretrain run
    in-process with the scaled-down settings (later flags win)."""
    from lmsrr.pretrain.train import main

    def run(name: str, *extra: str):
        out = tmp_path / name
        code = main(TINY + ["--out", str(out), "--work-dir", str(tmp_path / f"{name}-work"), *extra])
        return code, capsys.readouterr().err, out

    return run


@pytest.fixture
def tiny_source() -> str:
    return TINY_SOURCE
