"""--no-progress hides the image scan's bar too (it runs while the stream is built)."""
import datagen

from lmsrr.config import DataConfig
from lmsrr.data import build_stream


def test_the_scan_bar_follows_progress(tmp_path, capsys):
    root = datagen.write_image_folder(str(tmp_path), ["a", "b"], train=3, val=1)
    cfg = DataConfig(stream=f"folder:{root}", tasks=2, loader="torch")
    build_stream(cfg, progress=False)
    assert "checking" not in capsys.readouterr().err
    build_stream(cfg, progress=True)
    assert "checking" in capsys.readouterr().err  # the same scan, its bar shown
