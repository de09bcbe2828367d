"""`camzoo explain` and image reading: odd formats, corrupt files, targets, listing."""
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from camzoo.cli import main
from camzoo.data.images import ImageReadError, load_image, to_rgb


def _write_odd_images(d):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    Image.fromarray(rgb[..., 0], "L").save(d / "gray.png")
    Image.fromarray(np.dstack([rgb, np.full((40, 50), 128, np.uint8)]), "RGBA").save(d / "rgba.png")
    Image.fromarray(rgb).convert("CMYK").save(d / "cmyk.jpg")
    Image.fromarray((rng.integers(0, 65536, (40, 50))).astype(np.uint16)).save(d / "deep16.png")
    Image.fromarray(rgb[:3, :2]).save(d / "tiny.png")
    Image.fromarray(rgb).convert("P").save(d / "palette.gif")
    (d / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    return ["gray.png", "rgba.png", "cmyk.jpg", "deep16.png", "tiny.png", "palette.gif"]


def test_to_rgb_conversions(tmp_path):
    good = _write_odd_images(tmp_path)
    for f in good:
        im = load_image(tmp_path / f)
        assert im.mode == "RGB"
    # 16-bit is rescaled, not clipped: 65535 -> 255, 32768 -> 128
    im16 = Image.fromarray(np.array([[65535, 32768, 0]], dtype=np.uint16))
    np.testing.assert_array_equal(np.asarray(to_rgb(im16))[0, :, 0], [255, 128, 0])
    # alpha composited on white
    rgba = Image.fromarray(np.array([[[0, 0, 0, 0], [0, 0, 0, 255]]], dtype=np.uint8), "RGBA")
    np.testing.assert_array_equal(np.asarray(to_rgb(rgba))[0], [[255, 255, 255], [0, 0, 0]])
    with pytest.raises(ImageReadError, match="corrupt.jpg"):
        load_image(tmp_path / "corrupt.jpg")


def test_explain_cli_odd_and_corrupt_images(tmp_path):
    good = _write_odd_images(tmp_path)
    out = tmp_path / "out"
    files = [str(tmp_path / f) for f in good] + [str(tmp_path / "corrupt.jpg")]
    res = CliRunner().invoke(main, ["explain", *files, "--methods", "gradcam,fakecam", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "corrupt.jpg" in res.output and "cannot read image" in res.output
    assert f"wrote {len(good)} image(s)" in res.output
    for f in good:
        stem = f.rsplit(".", 1)[0]
        assert (out / f"{stem}.png").stat().st_size > 1000
        v = np.load(out / stem / "gradcam.npy")
        assert v.shape == (224, 224) and v.dtype == np.float32 and 0 <= v.min() and v.max() <= 1


def test_explain_cli_sample_photos_and_targets(tmp_path):
    out = tmp_path / "o"
    res = CliRunner().invoke(main, ["explain", "--methods", "fakecam", "--out", str(out), "--target", "285"])
    assert res.exit_code == 0, res.output
    assert {p.name for p in out.glob("*.png")} == {f"{n}.png" for n in
                                                     ("chelsea", "coffee", "rocket", "astronaut", "camera", "motorcycle_left")}
    res = CliRunner().invoke(main, ["explain", "--methods", "fakecam", "--out", str(out), "--target", "1000"])
    assert res.exit_code != 0 and "out of range" in res.output
    res = CliRunner().invoke(main, ["explain", "--methods", "nosuch", "--out", str(out)])
    assert res.exit_code != 0 and "available:" in res.output and "gradcam" in res.output
    res = CliRunner().invoke(main, ["explain", "--layer", "conv9", "--methods", "gradcam", "--out", str(out)])
    assert res.exit_code != 0 and "blocks, conv_head" in res.output
    res = CliRunner().invoke(main, ["explain", "--backbone", "lenet", "--out", str(out)])
    assert res.exit_code != 0 and "efficientnet_lite0" in res.output


def test_list_cli():
    res = CliRunner().invoke(main, ["list"])
    assert res.exit_code == 0
    for word in ("gradcam++", "fakecam", "efficientnet_lite0", "conv_head*", "conv5*, pool5"):
        assert word in res.output
