"""User mistakes: one line on stderr, exit status 2, no traceback, found before the model loads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import huggingface_hub
import pytest
from cli_helpers import one_error_line, run_cli
from huggingface_hub import constants

from tl_lvlm.cli import main
from tl_lvlm.cli.common import CliError
from tl_lvlm.cli.model_source import check_model_source


@pytest.fixture
def no_hub(monkeypatch):
    """Fail the test if the hub or its cache is consulted."""

    def refuse(*args, **kwargs):
        raise AssertionError("the hub was consulted")

    monkeypatch.setattr(huggingface_hub, "model_info", refuse)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", refuse)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--n-masks", "0"], "argument --n-masks: must be >= 1, got 0"),
        (["--n-masks", "many"], "argument --n-masks: must be an integer, got 'many'"),
        (["--p-ablate", "1"], "argument --p-ablate: must be strictly between 0 and 1, got 1"),
        (["--p-ablate", "0"], "argument --p-ablate: must be strictly between 0 and 1, got 0"),
        (["--n-samples", "0"], "argument --n-samples: must be >= 1, got 0"),
        (["--threads", "0"], "argument --threads: must be >= 1, got 0"),
        (["--batch-size", "0"], "argument --batch-size: must be >= 1, got 0"),
        (["--min-logit-gap", "-1"], "argument --min-logit-gap: must be a number >= 0, got -1"),
        (["--shard", "-1"], "argument --shard: must be >= 0, got -1"),
        (["--dtype", "fp8"], "argument --dtype: invalid choice: 'fp8'"),
    ],
)
def test_out_of_range_numbers(argv, message, tmp_path):
    out = tmp_path / "run"
    proc = run_cli("attribute", "--model", "tl-lvlm/tiny-digits", "--images", "digits",
                   "--out", out, *argv)  # fmt: skip
    assert proc.returncode == 2
    line = one_error_line(proc.stderr)
    assert message in line and line.endswith("(see tl-lvlm attribute --help)")
    assert not out.exists()


def test_flow_window_out_of_range():
    proc = run_cli("flow", "--model", "m", "--images", "random", "--out", "o", "--window", "0")
    assert proc.returncode == 2
    assert "argument --window: must be >= 1, got 0" in one_error_line(proc.stderr, "tl-lvlm flow")


def test_zoo_name_typo(tmp_path):
    out = tmp_path / "run"
    proc = run_cli("attribute", "--model", "tl-lvlm/tiny-digit", "--images", "digits",
                   "--out", out)  # fmt: skip
    assert proc.returncode == 2
    assert one_error_line(proc.stderr) == (
        "tl-lvlm attribute: error: --model tl-lvlm/tiny-digit is not a zoo model; did you mean "
        "tl-lvlm/tiny-digits?; zoo models: tl-lvlm/tiny-digits"
    )
    assert not out.exists()


def test_hub_name_not_cached_fails_at_once_offline(monkeypatch, tmp_path, capsys, no_model_load):
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    argv = ["attribute", "--model", "some-org/some-model", "--images", "digits", "--out"]
    assert main([*argv, str(tmp_path / "run")]) == 2
    assert one_error_line(capsys.readouterr().err) == (
        "tl-lvlm attribute: error: --model some-org/some-model is not in the local Hugging Face "
        "cache and HF_HUB_OFFLINE is set; download it first, or pass a local directory"
    )


def test_hub_name_asked_once_then_refused(monkeypatch, tmp_path):
    from huggingface_hub.errors import RepositoryNotFoundError

    class NotFound(RepositoryNotFoundError):
        def __init__(self):  # the real one wants an HTTP response
            Exception.__init__(self, "404 Repository Not Found")

    calls = []

    def model_info(name, timeout):
        calls.append((name, timeout))
        raise NotFound()

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "model_info", model_info)
    with pytest.raises(CliError, match=r"some-org/some-model: no such model on the Hugging Face"):
        check_model_source("some-org/some-model")
    assert calls == [("some-org/some-model", 10.0)]

    def unreachable(name, timeout):
        calls.append(name)
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(huggingface_hub, "model_info", unreachable)
    with pytest.raises(CliError, match=r"the hub cannot be reached \(ConnectionError: Name or"):
        check_model_source("some-org/some-model")
    assert len(calls) == 2  # one request, no retries


def test_hub_name_in_the_cache_is_not_asked(monkeypatch, tmp_path):
    snapshot = tmp_path / "models--some-org--some-model" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (tmp_path / "models--some-org--some-model" / "refs").mkdir()
    (tmp_path / "models--some-org--some-model" / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))

    def refuse(*args, **kwargs):
        raise AssertionError("the hub was asked about a cached model")

    monkeypatch.setattr(huggingface_hub, "model_info", refuse)
    check_model_source("some-org/some-model")


@pytest.mark.parametrize("prefix", ["./", "", "ABS"])
def test_local_path_typo_says_did_you_mean_without_the_hub(
    prefix, tmp_path, monkeypatch, capsys, no_hub, no_model_load
):
    (tmp_path / "models" / "llava-tiny").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    typo = "models/llava-tiyn" if prefix != "ABS" else str(tmp_path / "models" / "llava-tiyn")
    typo = prefix + typo if prefix != "ABS" else typo
    assert main(["attribute", "--model", typo, "--images", "digits", "--out", "run"]) == 2
    line = one_error_line(capsys.readouterr().err)
    guess = "models/llava-tiny" if prefix != "ABS" else str(tmp_path / "models" / "llava-tiny")
    assert line.endswith(f"--model {typo}: no such directory; did you mean {guess}?")


def test_directory_without_config(tmp_path, capsys, no_model_load):
    assert main(["attribute", "--model", str(tmp_path), "--images", "digits", "--out",
                 str(tmp_path / "run")]) == 2  # fmt: skip
    assert "is a directory without config.json" in one_error_line(capsys.readouterr().err)


def test_image_source_mistakes(tmp_path, monkeypatch, capsys, no_model_load):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "photos").mkdir()
    (tmp_path / "empty").mkdir()
    base = ["attribute", "--model", "tl-lvlm/tiny-digits", "--out", "run"]
    cases = {
        ("--images", "photoz"): "--images 'photoz' is neither a directory nor a builtin image "
        "set; did you mean photos?",
        ("--images", "digit"): "--images 'digit' is neither a directory nor a builtin image set; "
        "did you mean digits?",
        ("--images", "empty"): "--images empty: no .png/.jpg/.jpeg/.webp/.bmp/.tif/.tiff/"
        ".gif images in this directory",
        ("--images", "digits", "--reference-images", "randm"): "--reference-images 'randm' is "
        "neither a directory nor a builtin image set; did you mean random?",
    }
    for argv, message in cases.items():
        assert main([*base, *argv]) == 2
        assert message in one_error_line(capsys.readouterr().err)
    from PIL import Image

    Image.new("RGB", (4, 4)).save(tmp_path / "photos" / "a.png")
    (tmp_path / "photos" / "labels.json").write_text("{not json")
    assert main([*base, "--images", "photos"]) == 2
    assert "labels.json is not valid JSON" in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "run").exists()


def test_unwritable_out_is_found_before_the_model_loads(tmp_path, capsys, no_model_load):
    (tmp_path / "file").write_text("")
    argv = ["attribute", "--model", "tl-lvlm/tiny-digits", "--images", "digits", "--out"]
    assert main([*argv, str(tmp_path / "file" / "run")]) == 2
    assert one_error_line(capsys.readouterr().err).endswith("file is a file, not a directory")
    assert main([*argv, str(tmp_path / "file")]) == 2
    assert "exists and is not a directory" in capsys.readouterr().err


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc is Linux's")
def test_unwritable_out_even_for_root(capsys, no_model_load):
    # /proc refuses new directories even to root, for whom os.access says yes.
    argv = ["attribute", "--model", "tl-lvlm/tiny-digits", "--images", "digits", "--out"]
    assert main([*argv, "/proc/tl-lvlm-test/run"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "--out /proc/tl-lvlm-test/run: cannot write in /proc" in line
    assert not Path("/proc/tl-lvlm-test").exists()


def test_bad_device_and_shards(tmp_path, capsys, no_model_load):
    argv = ["attribute", "--model", "tl-lvlm/tiny-digits", "--images", "digits", "--out",
            str(tmp_path / "run")]  # fmt: skip
    assert main([*argv, "--device", "gpu0"]) == 2
    assert "--device 'gpu0' is not a device" in one_error_line(capsys.readouterr().err)
    assert main([*argv, "--shard", "3", "--n-shards", "2"]) == 2
    assert "invalid shard 3 of 2" in one_error_line(capsys.readouterr().err)
    assert main([*argv, "--shard", "1"]) == 2
    assert "pass both shard and n_shards" in one_error_line(capsys.readouterr().err)


def test_local_path_typo_fails_without_importing_torch(tmp_path):
    (tmp_path / "models" / "llava-tiny").mkdir(parents=True)
    code = (
        "import sys; from tl_lvlm.cli import main; "
        "rc = main(['attribute', '--model', 'models/llava-tiyn', '--images', 'digits', "
        "'--out', 'run']); print(rc, 'torch' in sys.modules)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path
    )
    assert proc.stdout.split() == ["2", "False"], proc.stderr
    assert "no such directory; did you mean models/llava-tiny?" in one_error_line(proc.stderr)
