"""``skfmcib weights``: path, info on a checkpoint, offline fetch."""

import socket
from dataclasses import replace

from skfmcib import weights
from skfmcib.cli import main
from skfmcib.encoder import EncoderConfig, build_encoder
from skfmcib.weights import FMCIB_WEIGHTS, REGISTRY, save_checkpoint


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/w"


def test_info_describes_a_checkpoint(tmp_path, capsys):
    path = save_checkpoint(build_encoder(EncoderConfig("resnet10", 0.25)), tmp_path / "e.pt")
    assert main(["weights", "info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "resnet10" in out and "features:     128" in out and "sha256:" in out


def test_info_on_a_corrupt_file_fails_with_its_name(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"junk")
    assert main(["weights", "info", str(bad)]) == 1
    assert "bad.pt" in capsys.readouterr().err


def test_info_refuses_weights_with_nan_values(tmp_path, capsys):
    import torch

    net = build_encoder(EncoderConfig("resnet10", 0.25))
    with torch.no_grad():
        net.bn1.running_var[3] = float("nan")
    path = save_checkpoint(net, tmp_path / "nan.pt")
    assert main(["weights", "info", str(path)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "nan.pt" in captured.err and "bn1.running_var" in captured.err


def test_path_and_offline_fetch(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(weights, "_NOTICES_SHOWN", {"fmcib"})
    offline = replace(FMCIB_WEIGHTS, url=_closed_port_url(), api_url=_closed_port_url())
    monkeypatch.setitem(REGISTRY, "fmcib", offline)
    assert main(["weights", "path", "--cache-dir", str(tmp_path)]) == 1  # not there yet
    assert str(tmp_path / "fmcib" / "model_weights.torch") in capsys.readouterr().out
    assert main(["weights", "fetch", "--cache-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "by hand" in err and str(tmp_path / "fmcib" / "model_weights.torch") in err
    assert "skfmcib extract --weights <path to the file>" in err  # fetch has no --weights
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(["weights", "fetch", "--cache-dir", str(blocker / "sub")]) == 1
    err = capsys.readouterr().err
    assert "Cannot write" in err and "skfmcib extract --weights <path to the file>" in err


def test_info_never_downloads_and_says_how_to(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(weights, "_NOTICES_SHOWN", {"fmcib"})
    # A download would fail on these closed ports with the manual-install advice.
    offline = replace(FMCIB_WEIGHTS, url=_closed_port_url(), api_url=_closed_port_url())
    monkeypatch.setitem(REGISTRY, "fmcib", offline)
    assert main(["weights", "info", "fmcib", "--cache-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "not downloaded" in err and "skfmcib weights fetch" in err
    assert "by hand" not in err and not (tmp_path / "fmcib").exists()


def test_info_on_random_names_no_python_parameter(capsys):
    assert main(["weights", "info", "random"]) == 1
    err = capsys.readouterr().err
    assert "No checkpoint file at 'random'" in err and "weights=None" not in err
