"""`fashion-tune predict`: image files of any size, mode and background, classified by the promoted CNN."""

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from fashion_tune.data.datafiles import CLASSES, load_fashion_mnist
from fashion_tune.training.config import resolve_config
from fashion_tune.training.loop import load_splits
from fashion_tune.evaluation.predict import load_image, predict_files
from fashion_tune.promotion.promote import promote_best_trial
from test_promote import assert_one_line_error, quiet, run_cli, tiny, train, write_experiment

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A promoted tiny CNN (about 80% accurate) in its own models directory."""
    root = tmp_path_factory.mktemp("predict")
    splits = load_splits(resolve_config("cnn", tiny("cnn", subset=3000)))
    states = train("cnn", splits, epochs=3, lr=3e-3, subset=3000)
    promote_best_trial(write_experiment(root / "exp", "cnn", {"t": states}), models_dir=root / "models", echo=quiet)
    return root / "models"


def save(path: Path, pixels: torch.Tensor, size: tuple[int, int], mode: str = "L", invert: bool = False) -> Path:
    image = Image.fromarray(((1 - pixels if invert else pixels) * 255).round().byte().numpy(), mode="L")
    image.resize(size, Image.BILINEAR).convert(mode).save(path)
    return path


@pytest.fixture(scope="module")
def test_images():
    data = load_fashion_mnist()
    return data.test_images[:40].float() / 255, data.test_labels[:40]


def test_resized_recoloured_and_inverted_files_get_the_predictions_of_the_originals(tmp_path, models, test_images):
    images, labels = test_images
    originals, variants = [], []
    for i, pixels in enumerate(images):
        originals.append(save(tmp_path / f"{i}.png", pixels, (28, 28)))
        kind = i % 3
        if kind == 0:
            variants.append(save(tmp_path / f"{i}-big.png", pixels, (84, 84)))  # 3x larger
        elif kind == 1:
            variants.append(save(tmp_path / f"{i}-inverted.jpg", pixels, (56, 56), mode="RGB", invert=True))
        else:
            variants.append(save(tmp_path / f"{i}-rgba.png", pixels, (40, 40), mode="RGBA"))
    base = predict_files(originals, models_dir=models)
    other = predict_files(variants, models_dir=models)
    agree = sum(a.top[0][0] == b.top[0][0] for a, b in zip(base, other)) / len(base)
    correct = sum(p.top[0][0] == CLASSES[y] for p, y in zip(base, labels.tolist())) / len(base)
    assert agree >= 0.8, agree
    assert correct >= 0.6, correct
    assert [p.inverted for p in other] == [i % 3 == 1 for i in range(len(other))]
    assert all(len(p.top) == 3 and abs(sum(prob for _, prob in p.top) - 1) < 1 and p.top[0][1] >= p.top[1][1] for p in base)


def test_an_inverted_image_loads_back_to_the_original_pixels(tmp_path, test_images):
    pixels = test_images[0][0]
    x, inverted = load_image(save(tmp_path / "inv.png", pixels, (28, 28), invert=True))
    assert inverted and torch.allclose(x[0], pixels, atol=1 / 255 + 1e-6)
    y, flipped = load_image(save(tmp_path / "dark.png", pixels, (28, 28)), invert=True)  # forced
    assert flipped and torch.allclose(y[0], 1 - pixels, atol=1 / 255 + 1e-6)


def test_cli_prints_top3_and_json_and_no_invert_turns_inversion_off(tmp_path, models, test_images, capsys):
    path = save(tmp_path / "white.png", test_images[0][0], (100, 100), invert=True)
    code, out, err = run_cli(capsys, "predict", path, "--models-dir", models)
    assert code == 0, err
    assert out.startswith(f"{path}: ") and out.count(",") == 2 and "(inverted)" in out
    code, out, _ = run_cli(capsys, "predict", path, "--models-dir", models, "--json", "--no-invert")
    parsed = json.loads(out)
    assert code == 0 and parsed[0]["inverted"] is False and len(parsed[0]["top"]) == 3
    assert {entry["class"] for entry in parsed[0]["top"]} <= set(CLASSES)


@pytest.mark.parametrize("make, fragment", [
    (lambda p: p.write_text("not an image at all"), "not an image"),
    (lambda p: p.write_bytes(b""), "empty"),
    (lambda p: None, "no such file"),
])
def test_bad_files_give_one_line(tmp_path, models, capsys, make, fragment):
    path = tmp_path / "input.png"
    make(path)
    assert_one_line_error(*run_cli(capsys, "predict", path, "--models-dir", models)[::2], str(path), fragment)


def test_predict_without_a_promoted_model_says_how_to_get_one(tmp_path, test_images, capsys):
    path = save(tmp_path / "a.png", test_images[0][0], (28, 28))
    assert_one_line_error(*run_cli(capsys, "predict", path, "--models-dir", tmp_path / "none")[::2], "no promoted cnn", "promote")


def test_the_shipped_models_classify_and_sample_without_training(tmp_path, test_images, capsys):
    shipped = REPO / "best_models"
    if not (shipped / "cnn" / "model.pt").is_file() or not (shipped / "vae" / "model.pt").is_file():
        pytest.skip("best_models/ holds no promoted CNN and VAE yet (make models writes them)")
    images, labels = test_images
    paths = [save(tmp_path / f"{i}.png", pixels, (28, 28)) for i, pixels in enumerate(images)]
    predictions = predict_files(paths, models_dir=shipped)
    assert sum(p.top[0][0] == CLASSES[y] for p, y in zip(predictions, labels.tolist())) >= 0.9 * len(paths)
    out = tmp_path / "dresses.png"
    code, printed, err = run_cli(capsys, "sample", "--class", "dress", "-n", "3", "--candidates", "10", "--seed", "0",
                                 "--models-dir", shipped, "--out", out)
    assert code == 0, err
    assert out.read_bytes()[:4] == b"\x89PNG" and "judge confidence" in printed


def test_sampled_images_written_one_per_file_are_what_predict_reads(tmp_path, capsys):
    """`sample --images DIR` writes each item as a 28x28 grey PNG; `predict DIR` classifies them as is
    (not inverted) and, with guided samples, as the class asked for."""
    models = shipped_models()
    if not (models / "vae" / "model.pt").is_file():
        pytest.skip("best_models/ holds no promoted VAE (make models writes it)")
    code, printed, err = run_cli(capsys, "sample", "--class", "trouser", "-n", "3", "--candidates", "10", "--seed", "0",
                                 "--models-dir", models, "--out", tmp_path / "grid.png", "--images", tmp_path / "items")
    assert code == 0, err
    files = sorted((tmp_path / "items").iterdir())
    assert [f.name for f in files] == ["trouser-0.png", "trouser-1.png", "trouser-2.png"]
    with Image.open(files[0]) as image:
        assert (image.size, image.mode) == ((28, 28), "L")
    predictions = predict_files(files, models_dir=models)
    assert all(p.top[0][0] == "Trouser" and not p.inverted for p in predictions)
    code, _, err = run_cli(capsys, "sample", "--class", "trouser", "--models-dir", models, "--out", tmp_path / "b.png",
                           "--images", tmp_path / "grid.png")
    assert_one_line_error(code, err, "--images", "not a directory")
    assert not (tmp_path / "b.png").exists()


def shipped_models():
    if not (REPO / "best_models" / "cnn" / "model.pt").is_file():
        pytest.skip("best_models/ holds no promoted CNN (make models writes it)")
    return REPO / "best_models"


def test_bad_files_among_good_ones_are_reported_each_and_the_good_ones_classified(tmp_path, test_images, capsys):
    models = shipped_models()
    images = test_images[0]
    first, last = save(tmp_path / "first.png", images[0], (28, 28)), save(tmp_path / "last.png", images[1], (28, 28))
    folder = tmp_path / "folder"
    folder.mkdir()
    inside = [save(folder / "a.png", images[2], (28, 28)), save(folder / "b.JPG", images[3], (28, 28), mode="RGB")]
    (folder / "notes.txt").write_text("not an image, and not one by its name either")
    bad, missing, empty = tmp_path / "bad.png", tmp_path / "missing.png", tmp_path / "empty"
    bad.write_text("not an image at all")
    empty.mkdir()

    code, out, err = run_cli(capsys, "predict", first, bad, missing, folder, empty, last, "--models-dir", models)
    assert code == 2
    assert [line.split(": ")[0] for line in out.splitlines()] == [str(p) for p in (first, *inside, last)]
    assert "Traceback" not in err
    problems = err.strip().splitlines()
    assert len(problems) == 3, err
    for line, path, fragment in zip(problems, (bad, missing, empty), ("not an image", "no such file", "no image files")):
        assert line.startswith(f"fashion-tune: error: {path}: ") and fragment in line, line

    code, out, _ = run_cli(capsys, "predict", bad, folder, "--models-dir", models, "--json")
    parsed = json.loads(out)
    assert code == 2 and [entry["path"] for entry in parsed] == [str(bad), *map(str, inside)]
    assert "not an image" in parsed[0]["error"] and len(parsed[1]["top"]) == 3


def test_a_directory_is_its_image_files(tmp_path, test_images, capsys):
    models = shipped_models()
    for i in range(3):
        save(tmp_path / f"{i}.png", test_images[0][i], (28, 28))
    code, out, err = run_cli(capsys, "predict", tmp_path, "--models-dir", models)
    assert code == 0, err
    assert [line.split(": ")[0] for line in out.splitlines()] == [str(tmp_path / f"{i}.png") for i in range(3)]
