"""`serve` refuses bad arguments with one clear line naming what is wrong, never a traceback."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from webhook import certs
from webhook.cli import main


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    files = certs.write_self_signed(tmp_path / "certs", hosts=["localhost"])
    return files.cert_file, files.key_file


def serve(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(["serve", "--no-cluster", "--port", "0", *argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def test_missing_certificate_file_is_named(
    tmp_path: Path, pair: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.crt"
    code, err = serve(capsys, "--cert-file", str(missing), "--key-file", str(pair[1]))
    assert code == 2
    assert f"--cert-file {missing}: no such file" in err


def test_missing_key_file_is_named(
    tmp_path: Path, pair: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.key"
    code, err = serve(capsys, "--cert-file", str(pair[0]), "--key-file", str(missing))
    assert code == 2
    assert f"--key-file {missing}: no such file" in err


def test_swapped_files_are_named(
    pair: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    cert, key = pair
    code, err = serve(capsys, "--cert-file", str(key), "--key-file", str(cert))
    assert code == 2
    assert f"--cert-file {key} holds a private key" in err
    assert "swapped" in err


def test_key_of_another_certificate_is_named(
    tmp_path: Path, pair: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    other = certs.write_self_signed(tmp_path / "other", hosts=["localhost"])
    code, err = serve(capsys, "--cert-file", str(pair[0]), "--key-file", str(other.key_file))
    assert code == 2
    assert f"--key-file {other.key_file} does not belong to --cert-file {pair[0]}" in err


def test_garbage_certificate_is_named(
    tmp_path: Path, pair: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    junk = tmp_path / "junk.crt"
    junk.write_text("hello\n")
    code, err = serve(capsys, "--cert-file", str(junk), "--key-file", str(pair[1]))
    assert code == 2
    assert f"--cert-file {junk}: not a PEM certificate" in err


def test_good_files_pass_the_check(pair: tuple[Path, Path], tmp_path: Path) -> None:
    from webhook.cli.serve import check_serving_files

    assert check_serving_files(*pair) is None
    # and a copy through a symlink (as a mounted Secret is) too
    link = tmp_path / "link.crt"
    link.symlink_to(pair[0])
    shutil.copy(pair[1], tmp_path / "k.key")
    assert check_serving_files(link, tmp_path / "k.key") is None


@pytest.mark.parametrize("workers", ["0", "-1", "two"])
def test_workers_must_be_at_least_one(workers: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["serve", "--self-signed", "--workers", workers])
    assert exc.value.code == 2
    assert "--workers" in capsys.readouterr().err


def test_no_cluster_and_kubeconfig_conflict(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["serve", "--self-signed", "--no-cluster", "--kubeconfig", str(tmp_path / "kc")])
    assert exc.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
